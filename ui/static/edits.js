// Edits that are safe: what an operator typed is never saved by mistake, never lost
// without a word, and never silently overwrites another operator's save.
//
// - Every save sends the ETag of the lot the row (or dialog) was rendered from as If-Match;
//   the answer's X-Lot-ETag is the lot's new one. A 412 answer is the field in conflict:
//   "Keep mine" saves again against the current lot, "Take theirs" drops the edit.
// - Escape in a field puts back the saved value (`data-saved`) and saves nothing; a field
//   whose value is its saved value never posts.
// - Unsaved, refused and conflicting edits are kept in sessionStorage ("lot:field") and
//   listed in #edits-pending; they are put back into their cells whenever the lot is shown
//   again (another page, back, reload), and leaving the page with any asks first.
// - A valid but unusual value (qty 0, above ui.max_quantity...) is answered with X-Confirm:
//   the cell asks, and "Save anyway" posts it again with confirmed=1.
(function () {
  "use strict";

  const STORE = "edits-pending";

  function load() {
    try {
      return JSON.parse(window.sessionStorage.getItem(STORE) || "{}") || {};
    } catch (err) {
      return {};
    }
  }

  function store(edits) {
    try {
      window.sessionStorage.setItem(STORE, JSON.stringify(edits));
    } catch (err) {
      // Storage full or refused: the banner still shows this page's edits.
    }
    banner(edits);
  }

  function fieldOf(elt) {
    return elt && elt.closest ? elt.closest("[data-save-field]") : null;
  }

  function inputOf(field) {
    return field.querySelector("input[data-saved], select[data-saved], textarea[data-saved]");
  }

  function holderOf(field) {
    return field.closest("[data-etag-lot]");
  }

  function keyOf(field) {
    const holder = holderOf(field);
    return holder ? holder.dataset.etagLot + ":" + field.dataset.saveField : null;
  }

  function cellsFor(key) {
    const [lot, name] = key.split(":");
    return [document.getElementById("lot-" + lot + "-" + name),
      document.getElementById("dlg-" + lot + "-" + name)].filter(Boolean);
  }

  function say(field, text, role) {
    const msg = field.querySelector(".save-msg");
    if (!msg) return;
    msg.textContent = text;
    if (role) msg.setAttribute("role", role);
    else msg.removeAttribute("role");
  }

  function clearActions(field) {
    field.querySelectorAll(".edit-actions").forEach(function (a) { a.remove(); });
  }

  function remember(field, state, reason) {
    const key = keyOf(field);
    const input = inputOf(field);
    if (!key || !input) return;
    const holder = holderOf(field);
    const edits = load();
    edits[key] = {
      lot: holder.dataset.etagLot,
      number: holder.dataset.lotNumber || "",
      field: field.dataset.saveField,
      label: field.dataset.label || field.dataset.saveField,
      value: input.value,
      state: state,
      reason: reason || (edits[key] && edits[key].reason) || "",
    };
    store(edits);
  }

  function forget(key) {
    const edits = load();
    if (key in edits) {
      delete edits[key];
      store(edits);
    }
  }

  // Back to the saved value, nothing pending, nothing saved.
  function restore(field) {
    const input = inputOf(field);
    if (input) input.value = input.dataset.saved;
    field.classList.remove("is-error", "is-pending", "is-conflict", "is-saving");
    field.querySelectorAll(".conflict").forEach(function (c) { c.remove(); });
    clearActions(field);
    say(field, "", null);
    const key = keyOf(field);
    if (key) forget(key);
  }

  function shownText(field, value) {
    const input = inputOf(field);
    if (input && input.tagName === "SELECT") {
      const option = Array.prototype.find.call(input.options, function (o) {
        return o.value === value;
      });
      return option ? option.textContent : value;
    }
    return value === "" ? "(empty)" : value;
  }

  // --- the banner ------------------------------------------------------------------------

  function bannerElement() {
    let el = document.getElementById("edits-pending");
    if (el) return el;
    el = document.createElement("section");
    el.id = "edits-pending";
    el.className = "edits-pending";
    el.setAttribute("role", "status");
    el.setAttribute("aria-live", "polite");
    el.hidden = true;
    const head = document.createElement("p");
    head.className = "edits-pending-head";
    const title = document.createElement("strong");
    head.appendChild(title);
    const discard = document.createElement("button");
    discard.type = "button";
    discard.className = "btn btn-quiet";
    discard.dataset.edit = "discard-all";
    discard.textContent = "Discard all";
    head.appendChild(discard);
    el.appendChild(head);
    el.appendChild(document.createElement("ul"));
    document.body.appendChild(el);
    return el;
  }

  function banner(edits) {
    if (!document.body) return;
    const keys = Object.keys(edits);
    const el = bannerElement();
    el.hidden = keys.length === 0;
    el.querySelector("strong").textContent =
      keys.length + (keys.length === 1 ? " change" : " changes") + " not saved";
    const list = el.querySelector("ul");
    list.replaceChildren();
    keys.forEach(function (key) {
      const e = edits[key];
      const item = document.createElement("li");
      item.dataset.key = key;
      const what = document.createElement("span");
      what.textContent = "Lot " + (e.number || e.lot) + " · " + e.label + ": " +
        (e.value === "" ? "(empty)" : e.value);
      item.appendChild(what);
      const why = document.createElement("span");
      why.className = "edits-pending-why";
      why.textContent = e.reason ? " — " + e.reason
        : e.state === "unsaved" ? " — not saved yet" : "";
      item.appendChild(why);
      list.appendChild(item);
    });
  }

  // Put pending edits back into the cells of lots now on the page.
  function reapply() {
    const edits = load();
    Object.keys(edits).forEach(function (key) {
      const e = edits[key];
      cellsFor(key).forEach(function (field) {
        const input = inputOf(field);
        if (!input || field.classList.contains("is-conflict") ||
            field.classList.contains("is-saving") || document.activeElement === input) return;
        input.value = e.value;
        if (input.value === input.dataset.saved && e.state === "unsaved") return;
        field.classList.add(e.state === "unsaved" ? "is-pending" : "is-error");
        say(field, e.reason ? "Not saved: " + e.reason : "Not saved yet", e.reason ? "alert" : null);
      });
    });
    banner(edits);
  }

  // --- typing, Escape ----------------------------------------------------------------------

  document.addEventListener("input", function (e) {
    const field = fieldOf(e.target);
    const input = field && inputOf(field);
    if (!input || input !== e.target || input.tagName === "SELECT") return;
    const key = keyOf(field);
    if (input.value === input.dataset.saved && !field.classList.contains("is-conflict")) {
      field.classList.remove("is-pending");
      if (key) forget(key);
    } else {
      field.classList.add("is-pending");
      remember(field, "unsaved", "");
    }
  });

  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape") return;
    const field = fieldOf(e.target);
    const input = field && inputOf(field);
    if (!input || input !== e.target) return;
    const key = keyOf(field);
    const pending = key && key in load();
    if (input.value === input.dataset.saved && !pending &&
        !field.classList.contains("is-error") && !field.classList.contains("is-conflict")) {
      return; // nothing to undo: let Escape do what it does (close the dialog)
    }
    e.preventDefault();
    e.stopPropagation();
    restore(field);
  }, true);

  // --- saving ------------------------------------------------------------------------------

  // A field showing its saved value has nothing to save (after Escape, or a re-render).
  document.addEventListener("htmx:confirm", function (e) {
    const elt = e.detail.elt;
    const field = fieldOf(elt);
    if (!field || elt !== inputOf(field) || elt.dataset.confirmed === "1") return;
    if (elt.value === elt.dataset.saved && !field.classList.contains("is-conflict")) {
      e.preventDefault();
      field.classList.remove("is-pending", "is-error");
      say(field, "", null);
      const key = keyOf(field);
      if (key) forget(key);
    }
  });

  document.addEventListener("htmx:configRequest", function (e) {
    const elt = e.detail.elt;
    const field = fieldOf(elt);
    if (!field) return;
    const holder = holderOf(field);
    if (holder && holder.dataset.etag) e.detail.headers["If-Match"] = holder.dataset.etag;
    if (elt.dataset.confirmed === "1") {
      e.detail.parameters.confirmed = "1";
      delete elt.dataset.confirmed;
    }
    clearActions(field);
  });

  // Every answer to a save: the lot's new ETag for its row and dialog, and what is pending.
  document.addEventListener("htmx:beforeSwap", function (e) {
    const elt = e.detail.requestConfig && e.detail.requestConfig.elt;
    const field = fieldOf(elt) || fieldOf(e.detail.target);
    const xhr = e.detail.xhr;
    if (!field || !xhr) return;
    const holder = holderOf(field);
    const key = keyOf(field);
    const tag = xhr.getResponseHeader("X-Lot-ETag");
    if (tag && holder) {
      document.querySelectorAll('[data-etag-lot="' + holder.dataset.etagLot + '"]')
        .forEach(function (h) { h.dataset.etag = tag; });
    }
    if (!key) return;
    if (xhr.status < 300) {
      forget(key);
    } else if (xhr.status === 412) {
      remember(field, "conflict", "changed by someone else meanwhile");
      e.detail.shouldSwap = true;
    } else {
      const reason = (xhr.responseText || "refused (" + xhr.status + ")").slice(0, 400);
      remember(field, xhr.getResponseHeader("X-Confirm") ? "confirm" : "refused", reason);
    }
  });

  document.addEventListener("htmx:afterRequest", function (e) {
    const elt = e.detail.elt;
    const field = fieldOf(elt);
    const xhr = e.detail.xhr;
    if (!field || !field.isConnected || e.detail.successful || !xhr) return;
    if (!xhr.status) {
      remember(field, "refused", "the gateway could not be reached");
      return;
    }
    if (xhr.getResponseHeader("X-Confirm")) {
      // Valid but unusual: ask before saving it.
      field.classList.remove("is-error");
      field.classList.add("is-pending", "is-confirm");
      say(field, xhr.responseText, "alert");
      const actions = document.createElement("div");
      actions.className = "edit-actions";
      [["confirm", "Save anyway", "btn"], ["cancel", "Cancel", "btn btn-quiet"]]
        .forEach(function (b) {
          const button = document.createElement("button");
          button.type = "button";
          button.className = b[2];
          button.dataset.edit = b[0];
          button.textContent = b[1];
          actions.appendChild(button);
        });
      field.appendChild(actions);
      actions.querySelector("button").focus();
    }
  });

  // --- the choices: keep mine / take theirs / save anyway / cancel / discard all ----------

  document.addEventListener("click", function (e) {
    const button = e.target.closest && e.target.closest("button[data-edit]");
    if (!button) return;
    const action = button.dataset.edit;
    if (action === "discard-all") {
      const edits = load();
      Object.keys(edits).forEach(function (key) { cellsFor(key).forEach(restore); });
      store({});
      return;
    }
    const field = fieldOf(button);
    const input = field && inputOf(field);
    if (!input) return;
    if (action === "keep" || action === "confirm") {
      // The row's ETag is the current lot's already (the 412 answer's X-Lot-ETag).
      input.dataset.confirmed = "1";
      field.classList.remove("is-confirm");
      field.querySelectorAll(".conflict").forEach(function (c) { c.hidden = true; });
      if (action === "keep") field.classList.remove("is-conflict");
      window.htmx.trigger(input, "change");
      input.focus();
    } else if (action === "take") {
      const box = field.querySelector(".conflict");
      const theirs = box ? box.dataset.theirs : input.dataset.saved;
      input.dataset.saved = theirs;
      restore(field);
      say(field, "Kept their value: " + shownText(field, theirs), null);
      input.focus();
    } else if (action === "cancel") {
      restore(field);
      field.classList.remove("is-confirm");
      input.focus();
    }
  });

  window.addEventListener("beforeunload", function (e) {
    if (Object.keys(load()).length === 0) return;
    e.preventDefault();
    e.returnValue = "";
  });

  document.addEventListener("htmx:afterSettle", reapply);
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", reapply);
  else reapply();
})();
