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
    // The list item whose panel starts loading becomes the current one.
    const item = elt.closest && elt.closest(".list .item");
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
    }
  });
})();
