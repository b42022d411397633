// The dashboard's only script: draws the Plotly figures embedded in a page and keeps the
// sessions table live. Pages are complete without it. Values from the server are only ever
// written with textContent, never as HTML.
"use strict";

function drawCharts() {
  if (typeof Plotly === "undefined") { return; }
  document.querySelectorAll("[data-figure]").forEach(function (element) {
    var source = document.getElementById(element.dataset.figure);
    if (!source) { return; }
    var figure = JSON.parse(source.textContent);
    Plotly.newPlot(element, figure.data, figure.layout, { responsive: true, displaylogo: false })
      .then(function () { element.dataset.rendered = "true"; });
  });
}

function percent(value) { return value === null ? "" : (100 * value).toFixed(1) + "%"; }
function decimals(value) { return value === null ? "" : value.toFixed(4); }
function when(text) { return text ? text.replace("T", " ").slice(0, 19) : ""; }

function addCell(row, text, className) {
  var cell = document.createElement("td");
  cell.textContent = text;
  if (className) { cell.className = className; }
  row.appendChild(cell);
  return cell;
}

function sessionRow(s) {
  var row = document.createElement("tr");
  row.dataset.session = String(s.id);
  row.dataset.state = s.state;
  var link = document.createElement("a");
  link.href = "/sessions/" + encodeURIComponent(s.id);
  link.textContent = String(s.id);
  addCell(row, "").appendChild(link);
  addCell(row, s.state, "state");
  addCell(row, s.rounds_done + " of " + (s.rounds_total === null ? "?" : s.rounds_total), "round");
  addCell(row, s.participants.join(", "));
  addCell(row, percent(s.last_accuracy), "num");
  addCell(row, decimals(s.last_fit_loss), "num");
  addCell(row, "v" + s.base_version);
  addCell(row, s.version_number === null ? "" : "v" + s.version_number);
  addCell(row, when(s.started_at));
  addCell(row, s.reason);
  return row;
}

function keepSessionsLive(table) {
  var body = table.tBodies[0];
  var status = document.getElementById("live-status");
  var every = Number(table.dataset.refreshMs) || 2000;
  function show(text) { if (status) { status.textContent = text; } }
  function refresh() {
    fetch(table.dataset.live, { headers: { "Accept": "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(function (sessions) {
        var rows = sessions.map(sessionRow);
        if (rows.length === 0) {
          var empty = document.createElement("tr");
          addCell(empty, "no session yet", "muted").colSpan = 10;
          rows = [empty];
        }
        body.replaceChildren.apply(body, rows);
        show("updated " + new Date().toLocaleTimeString());
      })
      .catch(function (error) { show("update failed (" + error.message + "); retrying"); })
      .finally(function () { setTimeout(refresh, every); });
  }
  setTimeout(refresh, every);
}

document.addEventListener("DOMContentLoaded", function () {
  drawCharts();
  var sessions = document.getElementById("sessions-table");
  if (sessions && sessions.dataset.live) { keepSessionsLive(sessions); }
});
