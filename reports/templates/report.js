// Enhancements only: the page reads fully without them. Click a column header of a
// sortable table to sort it; "collapse all" folds the sections; printing opens them all.
(function () {
  "use strict";
  function key(cell) {
    var sort = cell.getAttribute("data-sort");
    var number = parseFloat(sort !== null ? sort : cell.textContent);
    return isNaN(number) ? cell.textContent.trim().toLowerCase() : number;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var head = table.tHead;
    var body = table.tBodies[0];
    if (!head || !body) { return; }
    Array.prototype.forEach.call(head.rows[0].cells, function (th, column) {
      th.classList.add("sort");
      th.title = (th.title ? th.title + "; " : "") + "click to sort";
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(head.rows[0].cells, function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[column]), y = key(b.cells[column]);
          var order = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
          return ascending ? order : -order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  });
  var sections = document.querySelectorAll("section > details");
  var nav = document.querySelector("nav.toc");
  if (nav) {
    var toggle = document.createElement("button");
    toggle.type = "button";
    toggle.textContent = "collapse all";
    toggle.addEventListener("click", function () {
      var open = toggle.textContent === "expand all";
      sections.forEach(function (details) { details.open = open; });
      toggle.textContent = open ? "collapse all" : "expand all";
    });
    nav.appendChild(toggle);
  }
  window.addEventListener("beforeprint", function () {
    document.querySelectorAll("details").forEach(function (details) { details.open = true; });
  });
})();
