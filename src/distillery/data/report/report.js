(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("examples-data").textContent);
  var rows = data.rows;
  var search = document.getElementById("ex-search");
  var pick = document.getElementById("ex-input");
  var size = document.getElementById("ex-size");
  var body = document.getElementById("ex-body");
  var status = document.getElementById("ex-status");
  var prev = document.getElementById("ex-prev");
  var next = document.getElementById("ex-next");
  var shown = rows;
  var page = 0;

  rows.forEach(function (row) {
    row.hay = [row.ins, row.inp, row.out, row.verb, row.lang || "", row.rlang || ""].join("\n").toLowerCase();
  });

  function cell(tr, text, wrap) {
    var td = document.createElement("td");
    if (wrap) {
      var div = document.createElement("div");
      div.textContent = text;
      td.appendChild(div);
    } else {
      td.textContent = text;
    }
    tr.appendChild(td);
  }

  function language(row) {
    if (!row.lang && !row.rlang) { return ""; }
    return row.lang === row.rlang ? row.lang : (row.lang || "none") + " → " + (row.rlang || "none");
  }

  function render() {
    var perPage = parseInt(size.value, 10);
    var pages = Math.max(1, Math.ceil(shown.length / perPage));
    page = Math.min(page, pages - 1);
    body.replaceChildren();
    shown.slice(page * perPage, (page + 1) * perPage).forEach(function (row) {
      var tr = document.createElement("tr");
      cell(tr, data.inputs[row.src] + (row.turns ? " · " + row.turns + " turns" : ""), false);
      cell(tr, String(row.n), false);
      cell(tr, row.ins, true);
      cell(tr, row.inp, true);
      cell(tr, row.out, true);
      cell(tr, language(row), false);
      cell(tr, row.verb, false);
      cell(tr, row.len.join(" / "), false);
      cell(tr, row.rouge === null ? "" : row.rouge.toFixed(3), false);
      tr.addEventListener("click", function () { tr.classList.toggle("open"); });
      body.appendChild(tr);
    });
    status.textContent = shown.length.toLocaleString() + " of " + rows.length.toLocaleString() +
      " rows · page " + (page + 1) + " of " + pages;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }

  function refilter() {
    var query = search.value.trim().toLowerCase();
    var source = pick.value;
    shown = rows.filter(function (row) {
      return (source === "" || String(row.src) === source) && (query === "" || row.hay.indexOf(query) !== -1);
    });
    page = 0;
    render();
  }

  search.addEventListener("input", refilter);
  pick.addEventListener("change", refilter);
  size.addEventListener("change", function () { page = 0; render(); });
  prev.addEventListener("click", function () { page -= 1; render(); });
  next.addEventListener("click", function () { page += 1; render(); });
  refilter();
}());
