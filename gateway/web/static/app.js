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
  if (question && !window.confirm(question)) {
    event.preventDefault();
    event.stopImmediatePropagation();
  }
}, true);
