// What htmx attributes do not cover on the operator screen: the per-field save state, the
// lot dialog, and which list item is the current one. Loading feedback needs no script:
// hx-indicator puts "htmx-request" on the panel and ui.css shows its spinner.
(function () {
  "use strict";

  function saveField(elt) {
    return elt && elt.closest ? elt.closest("[data-save-field]") : null;
  }

  function say(field, text, isError) {
    const msg = field.querySelector(".save-msg");
    if (!msg) return;
    msg.textContent = text;
    if (isError) msg.setAttribute("role", "alert");
    else msg.removeAttribute("role");
  }

  document.addEventListener("htmx:beforeRequest", function (e) {
    const elt = e.detail.elt;
    const field = saveField(elt);
    if (field) {
      field.classList.remove("is-saved", "is-error");
      field.classList.add("is-saving");
      say(field, "Saving…", false);
      return;
    }
    // The list item whose panel starts loading becomes the current one (the item itself:
    // an event's lot count loading inside it is not a choice).
    const item = elt.matches && elt.matches(".list .item") ? elt : null;
    if (item) {
      item.closest(".list").querySelectorAll(".item.is-current").forEach(function (other) {
        other.classList.remove("is-current");
        other.removeAttribute("aria-current");
      });
      item.classList.add("is-current");
      item.setAttribute("aria-current", "true");
      // Another seller empties the lots panel: a lots answer still on its way belongs to
      // the old seller, so it is aborted (hx-sync keeps it on #panel-lots).
      if (item.hasAttribute("data-seller-id") && window.htmx) {
        window.htmx.trigger("#panel-lots", "htmx:abort");
      }
    }
  });

  // A saved field is replaced by the server's rendering of it ("is-saved"), so only a
  // refusal is handled here: the server answers with the reason as text and no swap, so
  // what the operator typed stays in the field.
  document.addEventListener("htmx:afterRequest", function (e) {
    const field = saveField(e.detail.elt);
    if (!field || !field.isConnected || e.detail.successful) return;
    const xhr = e.detail.xhr;
    const reason = xhr && xhr.status
      ? (xhr.responseText || "refused (" + xhr.status + ")").slice(0, 400)
      : "the gateway could not be reached";
    field.classList.remove("is-saving");
    field.classList.add("is-error");
    say(field, "Not saved: " + reason, true);
  });

  document.addEventListener("htmx:afterSwap", function (e) {
    if (e.detail.target && e.detail.target.id === "lot-dialog-body") {
      const dialog = document.getElementById("lot-dialog");
      if (dialog && !dialog.open) dialog.showModal();
      const lot = /\/ui\/lots\/(\d+)/.exec((e.detail.pathInfo || {}).requestPath || "");
      if (lot) setLotInUrl(lot[1]);
    }
  });

  // --- links: a modified click (Ctrl, Cmd, Shift, Alt) is the browser's ---------------------
  // Panel links are real links to the deep link; htmx would turn any click on them into a
  // fragment load, so a modified one is stopped before it reaches htmx (the browser then
  // opens the link in a new tab or window). A middle click is an auxclick: htmx never sees it.
  document.addEventListener("click", function (e) {
    if (!(e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) && e.button === 0) return;
    const link = e.target.closest && e.target.closest("a[href][hx-get]");
    if (link) e.stopPropagation();
  }, true);

  // --- which panel the operator works in ----------------------------------------------------
  // main.panels[data-show] (ui.css lays the panels out by it). A panel that starts loading
  // from a link becomes the one shown; once its content is in, its heading takes focus
  // (so a screen reader announces it and Tab continues from there).
  const PANEL_OF = { "sellers-body": "sellers", "events-body": "events", "lots-body": "lots" };
  let focusAfterSwap = null;
  const wide = window.matchMedia("(min-width: 1101px)");

  function show(panel) {
    const panels = document.getElementById("panels");
    if (panels) panels.dataset.show = panel;
  }

  function heading(panel) {
    if (panel === "lots") {
      return document.getElementById("lots-heading") || document.getElementById("panel-lots");
    }
    return document.getElementById(panel + "-heading");
  }

  function bringIntoView(panel) {
    const section = document.getElementById("panel-" + panel);
    if (section && section.scrollIntoView) section.scrollIntoView({ block: "start" });
  }

  document.addEventListener("htmx:beforeRequest", function (e) {
    const target = e.detail.target;
    const panel = target && PANEL_OF[target.id];
    const elt = e.detail.elt;
    if (!panel || !elt || elt.tagName !== "A") return;
    focusAfterSwap = panel;
    // On a wide screen the lots take the sellers' room once they are in, not before: the
    // list being clicked does not move under the pointer.
    if (panel === "events" || (panel === "lots" && !wide.matches)) {
      show(panel);
      bringIntoView(panel);
    }
  });

  document.addEventListener("htmx:afterSettle", function (e) {
    const target = e.detail.target;
    const panel = target && PANEL_OF[target.id];
    if (!panel) return;
    // Another seller's events empty the lots panel: the events are then the work.
    if (panel === "events" && !document.getElementById("lots-heading")) show("events");
    if (panel === "lots" && panel === focusAfterSwap) show("lots");
    if (panel !== focusAfterSwap) return;
    focusAfterSwap = null;
    const h = heading(panel);
    if (h) {
      bringIntoView(panel);
      h.focus({ preventScroll: true });
    }
  });

  // "‹ Sellers", "‹ Events" (narrow screens) and the folded sellers rail (wide screens):
  // show that panel without reloading anything.
  document.addEventListener("click", function (e) {
    const control = e.target.closest && e.target.closest("[data-show-panel]");
    if (!control || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey || e.button !== 0) return;
    e.preventDefault();
    const panel = control.getAttribute("data-show-panel");
    show(panel);
    bringIntoView(panel);
    const h = heading(panel);
    if (h) h.focus({ preventScroll: true });
  });

  // --- a lot has an address: ?…&lot=ID opens its dialog -------------------------------------
  function setLotInUrl(id) {
    const url = new URL(window.location.href);
    if (id) url.searchParams.set("lot", id);
    else url.searchParams.delete("lot");
    if (url.href !== window.location.href) window.history.replaceState(window.history.state, "", url.href);
  }

  document.addEventListener("DOMContentLoaded", function () {
    const dialog = document.getElementById("lot-dialog");
    if (dialog) dialog.addEventListener("close", function () { setLotInUrl(null); });
    // The server showed another view than the link asked for (its event is another
    // seller's): the address follows what is shown.
    const panels = document.getElementById("panels");
    const canonical = panels && panels.getAttribute("data-url");
    if (canonical) {
      const url = new URL(canonical, window.location.href);
      const lot = new URL(window.location.href).searchParams.get("lot");
      if (lot) url.searchParams.set("lot", lot);
      window.history.replaceState(window.history.state, "", url.href);
    }
    const lot = new URL(window.location.href).searchParams.get("lot");
    if (lot && /^\d+$/.test(lot) && dialog && window.htmx) {
      window.htmx.ajax("GET", "/ui/lots/" + lot, { target: "#lot-dialog-body", swap: "innerHTML" });
    }
    localiseTimes(document);
  });

  // --- arrow keys between the lots table's cells ----------------------------------------------
  // Up/Down: the same column in the row above/below. Left/Right: along the row, for a text
  // field only when its caret is at that edge (or all of it is selected), so typing and
  // moving the caret inside a value work as usual.
  const CELL_CONTROLS = "input:not([type=hidden]), select, button";

  function control(cell) {
    return cell ? cell.querySelector(CELL_CONTROLS) : null;
  }

  function atEdge(input, key) {
    if (input.tagName !== "INPUT") return true;
    let start, end;
    try { start = input.selectionStart; end = input.selectionEnd; } catch (err) { return true; }
    if (start === null) return true;
    const len = input.value.length;
    if (start === 0 && end === len) return true;
    return key === "ArrowLeft" ? end === 0 : start === len;
  }

  function moveTo(next) {
    if (!next || next.disabled) return false;
    next.focus();
    if (next.tagName === "INPUT" && next.select) next.select();
    return true;
  }

  document.addEventListener("keydown", function (e) {
    if (e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return;
    if (["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight"].indexOf(e.key) < 0) return;
    const from = e.target;
    if (!from.closest || !from.matches(CELL_CONTROLS)) return;
    const cell = from.closest("table.lots tbody td");
    const row = cell && cell.closest("tr");
    if (!row) return;
    let next = null;
    if (e.key === "ArrowUp" || e.key === "ArrowDown") {
      let other = e.key === "ArrowUp" ? row.previousElementSibling : row.nextElementSibling;
      while (other && !control(other.cells[cell.cellIndex])) {
        other = e.key === "ArrowUp" ? other.previousElementSibling : other.nextElementSibling;
      }
      next = other ? control(other.cells[cell.cellIndex]) : null;
    } else {
      if (!atEdge(from, e.key)) return;
      let i = cell.cellIndex;
      do {
        i += e.key === "ArrowLeft" ? -1 : 1;
        next = control(row.cells[i]);
      } while (!next && i > 0 && i < row.cells.length);
    }
    if (next && moveTo(next)) e.preventDefault();
    else if (from.tagName === "SELECT") e.preventDefault();  // never change a value by moving
  });

  // --- times in the operator's own time zone ------------------------------------------------
  // The server writes <time datetime="…Z" data-when>3 Mar 2026, 14:00 UTC</time>; here it
  // becomes "3 Mar 2026, 15:00 CET" (data-when="time": "15:00 CET"), the UTC text kept as
  // its title.
  const DATE_TIME = { day: "numeric", month: "short", year: "numeric", hour: "2-digit",
    minute: "2-digit", hourCycle: "h23", timeZoneName: "short" };
  const TIME_ONLY = { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZoneName: "short" };

  function localiseTimes(root) {
    if (!root || !root.querySelectorAll || !window.Intl) return;
    root.querySelectorAll("time[datetime][data-when]").forEach(function (t) {
      if (t.dataset.localised) return;
      const moment = new Date(t.getAttribute("datetime"));
      if (isNaN(moment.getTime())) return;
      const options = t.getAttribute("data-when") === "time" ? TIME_ONLY : DATE_TIME;
      t.title = t.textContent;
      t.textContent = new Intl.DateTimeFormat("en-GB", options).format(moment);
      t.dataset.localised = "1";
    });
  }

  document.addEventListener("htmx:load", function (e) { localiseTimes(e.target); });
})();
