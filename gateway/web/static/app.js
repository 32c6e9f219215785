// htmx sends the session's CSRF token with every request it makes (forms also carry it in a field).
document.addEventListener("htmx:config:request", function (event) {
  var meta = document.querySelector('meta[name="csrf-token"]');
  if (meta && event.detail && event.detail.ctx) {
    event.detail.ctx.request.headers["X-CSRF-Token"] = meta.content;
  }
});

// A step that cannot be undone asks first: the button (or its form) names the outcome in
// data-confirm. Listened for before htmx's own handler, so boosted and plain forms alike wait.
document.addEventListener("submit", function (event) {
  var form = event.target;
  var button = event.submitter;
  var question = (button && button.getAttribute("data-confirm")) || (form && form.getAttribute && form.getAttribute("data-confirm"));
  // A letter, or several at once, sent to another department: which (how many), and where.
  var step = form && form.elements && form.elements.namedItem("action");
  if (!question && form.getAttribute && form.getAttribute("data-confirm-reassign") && step && step.value === "reassign") {
    var department = form.elements.namedItem("department");
    var chosen = department && department.selectedIndex >= 0 ? department.options[department.selectedIndex].text : "";
    question = form.getAttribute("data-confirm-reassign")
      .replace("{count}", form.querySelectorAll('input[name="number"]:checked').length)
      .replace("{department}", chosen);
  }
  if (question && !window.confirm(question)) {
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}, true);

// A print button prints the page as it is laid out for paper (print.css): the letter's slip, or
// the register's sheet.
document.addEventListener("click", function (event) {
  var button = event.target.closest && event.target.closest("[data-print]");
  if (button) {
    window.print();
  }
});
