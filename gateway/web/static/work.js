// Keyboard shortcuts and the queue's selection. Listeners sit on the document, so they keep
// working when htmx swaps the page in (boosted links); nothing here is needed to use the pages.
(function () {
  "use strict";

  function rows() {
    var list = document.querySelector("[data-rows]");
    if (!list) return [];
    return Array.prototype.slice.call(list.querySelectorAll("tbody tr[data-href], article[data-href]"));
  }

  function current(all) {
    for (var i = 0; i < all.length; i++) if (all[i].classList.contains("kb-current")) return i;
    return -1;
  }

  function move(step) {
    var all = rows();
    if (!all.length) return false;
    var at = current(all);
    var next = at < 0 ? (step > 0 ? 0 : all.length - 1) : Math.min(all.length - 1, Math.max(0, at + step));
    if (at >= 0) all[at].classList.remove("kb-current");
    all[next].classList.add("kb-current");
    all[next].scrollIntoView({block: "nearest"});
    return true;
  }

  function open() {
    var all = rows(), at = current(all);
    if (at < 0) return false;
    var link = all[at].querySelector("a.open") || all[at].querySelector("a[href]");
    if (link) link.click();
    return true;
  }

  function toggle() {
    var all = rows(), at = current(all);
    if (at < 0) return false;
    var box = all[at].querySelector("input[type=checkbox][name=number]");
    if (!box) return false;
    box.checked = !box.checked;
    box.dispatchEvent(new Event("change", {bubbles: true}));
    return true;
  }

  function acknowledge() {
    var form = document.getElementById("bulk");
    if (!form || !form.querySelector("input[name=number]:checked")) return false;
    var action = form.querySelector("select[name=action]");
    if (!action || !action.querySelector("option[value=ack]")) return false;
    action.value = "ack";
    form.requestSubmit();
    return true;
  }

  function help(show) {
    var box = document.getElementById("kb-help");
    if (!box) return false;
    box.hidden = show === undefined ? !box.hidden : !show;
    if (!box.hidden) {
      var close = box.querySelector("[data-kb-close]");
      if (close) close.focus();
    }
    return true;
  }

  function go(url) {
    var link = document.createElement("a");
    link.href = url;
    document.body.appendChild(link);
    link.click();  // through htmx's boost, like any link
    link.remove();
  }

  var GO = {t: "/triage", m: "/letters?queue=mine", d: "/letters?queue=departments"};
  var pendingG = 0;

  function typing(target) {
    if (!target || !target.tagName) return false;
    var tag = target.tagName.toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || target.isContentEditable;
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var box = document.getElementById("kb-help");
    if (event.key === "Escape") {
      if (box && !box.hidden) { help(false); event.preventDefault(); }
      else if (typing(event.target)) event.target.blur();
      return;
    }
    if (typing(event.target)) return;
    // Enter on a focused link or button is theirs.
    if (event.key === "Enter" && event.target.closest && event.target.closest("a, button, summary")) return;
    var key = event.key, handled = false;
    if (pendingG && Date.now() - pendingG < 1500 && GO[key]) {
      pendingG = 0;
      go(GO[key]);
      event.preventDefault();
      return;
    }
    pendingG = 0;
    if (key === "?") handled = help();
    else if (box && !box.hidden) return;
    else if (key === "j" || key === "ArrowDown") handled = move(1);
    else if (key === "k" || key === "ArrowUp") handled = move(-1);
    else if (key === "Enter" || key === "o") handled = open();
    else if (key === "x") handled = toggle();
    else if (key === "a") handled = acknowledge();
    else if (key === "/") {
      var search = document.getElementById("search-q");
      if (search) { search.focus(); search.select(); handled = true; }
    } else if (key === "g") { pendingG = Date.now(); handled = true; }
    if (handled) event.preventDefault();
  });

  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) return;
    if (target.closest("[data-kb-close]") || target.id === "kb-help") { help(false); return; }
    // A click on a row (not on its link or box) makes it the current row.
    var row = target.closest("tr[data-href], article[data-href]");
    if (row && !target.closest("a, input, button, select, label")) {
      rows().forEach(function (r) { r.classList.remove("kb-current"); });
      row.classList.add("kb-current");
    }
  });

  // The selection: "select all", the count, the fields of the chosen step.
  function refresh(form) {
    var boxes = form.querySelectorAll("input[name=number]");
    var ticked = form.querySelectorAll("input[name=number]:checked").length;
    var count = form.querySelector("[data-bulk-count]");
    if (count) count.textContent = ticked ? count.dataset.some.replace("{count}", ticked) : count.dataset.none;
    var all = form.querySelector(".pick-all");
    if (all) {
      all.checked = ticked > 0 && ticked === boxes.length;
      all.indeterminate = ticked > 0 && ticked < boxes.length;
    }
    boxes.forEach(function (box) { box.closest("tr").classList.toggle("picked", box.checked); });
    var action = form.querySelector("[data-bulk-action]");
    if (!action) return;
    form.querySelectorAll("[data-bulk-for]").forEach(function (field) {
      var show = field.dataset.bulkFor.split(" ").indexOf(action.value) >= 0;
      field.hidden = !show;
      var words = field.getAttribute("data-label-" + action.value);
      var span = field.querySelector("span");
      if (words && span) span.textContent = words;
    });
    // Required only where the chosen step needs it (a reassignment's department and reason):
    // a hidden field that is required would hold the form back without a word.
    form.querySelectorAll("[data-required-for]").forEach(function (field) {
      field.required = field.dataset.requiredFor.split(" ").indexOf(action.value) >= 0;
    });
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) return;
    var form = target.closest("form#bulk");
    if (!form) return;
    if (target.classList.contains("pick-all")) {
      form.querySelectorAll("input[name=number]").forEach(function (box) { box.checked = target.checked; });
    }
    refresh(form);
  });

  function ready() {
    var form = document.getElementById("bulk");
    if (form) refresh(form);
  }
  document.addEventListener("DOMContentLoaded", ready);
  document.addEventListener("htmx:after:settle", ready);
})();
