// tierwise console: the little the pages need beyond plain forms. No framework, no build.
// - keeps the uploaded book in this tab's session storage for the Account and What-if pages
// - reads a chosen file into the book text area
// - posts forms marked data-fetch and swaps in the result section (the server sends only it)
// - re-renders the what-if diff as its fields change (data-live)
// - filters the book table; copies the markdown
"use strict";
(function () {
  var KEY = "tierwise.book";
  var store = {
    get: function () { try { return sessionStorage.getItem(KEY) || ""; } catch (e) { return ""; } },
    set: function (v) { try { sessionStorage.setItem(KEY, v); } catch (e) { /* full or disabled: the page still works */ } }
  };

  function $(sel, root) { return (root || document).querySelector(sel); }
  function $all(sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); }

  var seq = 0;
  var inflight = null;

  function submit(form, submitter) {
    var target = document.getElementById(form.getAttribute("data-fetch"));
    if (!target) { form.submit(); return; }
    if (form.hasAttribute("data-store-book")) {
      var book = $("textarea[data-book]", form);
      if (book) { store.set(book.value); }
    }
    if (inflight) { inflight.abort(); }
    var ctl = new AbortController();
    inflight = ctl;
    var started = performance.now();
    var mine = ++seq;
    target.setAttribute("aria-busy", "true");
    var body = new URLSearchParams(new FormData(form, submitter || null));
    fetch(form.getAttribute("action"), {
      method: "POST",
      body: body,
      headers: { "x-console": "fragment" },
      signal: ctl.signal,
      credentials: "same-origin"
    }).then(function (res) {
      if (res.status === 503) {
        // Busy (two what-ifs at once at most): try again shortly.
        setTimeout(function () { if (mine === seq) { submit(form, submitter); } }, 400);
        return null;
      }
      return res.text();
    }).then(function (html) {
      if (html === null || mine !== seq) { return; }
      target.innerHTML = html;
      target.setAttribute("data-seq", String(mine));
      target.setAttribute("data-ms", String(Math.round(performance.now() - started)));
      target.removeAttribute("aria-busy");
      wire(target);
    }).catch(function (e) {
      if (e && e.name === "AbortError") { return; }
      target.removeAttribute("aria-busy");
      target.textContent = "The server did not answer: " + e;
    });
  }

  function wire(root) {
    // Book table filters.
    var filters = $all("select[data-filter]", root);
    if (filters.length) {
      var apply = function () {
        var want = {};
        filters.forEach(function (f) { want[f.getAttribute("data-filter")] = f.value; });
        var rows = $all("#accounts tbody tr", root);
        var shown = 0;
        rows.forEach(function (tr) {
          var ok = (!want.tier || tr.getAttribute("data-tier") === want.tier) &&
            (!want.change || tr.getAttribute("data-change") === want.change) &&
            (!want.alert || (" " + tr.getAttribute("data-alerts") + " ").indexOf(" " + want.alert + " ") >= 0);
          tr.hidden = !ok;
          if (ok) { shown++; }
        });
        var count = $("#accounts-count", root);
        if (count) { count.textContent = shown + " of " + rows.length + " accounts"; }
      };
      filters.forEach(function (f) { f.addEventListener("change", apply); });
    }
    $all("button[data-copy]", root).forEach(function (b) {
      b.addEventListener("click", function () {
        var src = document.getElementById(b.getAttribute("data-copy"));
        var note = b.parentNode && $(".copied", b.parentNode);
        if (!src) { return; }
        var done = function () { if (note) { note.textContent = "Copied."; } };
        // No clipboard access (an insecure origin, a refused permission): show the text selected.
        var manual = function () {
          var d = src.closest("details");
          if (d) { d.open = true; }
          src.focus();
          src.select();
          if (note) { note.textContent = "Selected: press Ctrl+C to copy."; }
        };
        if (navigator.clipboard && navigator.clipboard.writeText) {
          navigator.clipboard.writeText(src.value).then(done, manual);
        } else {
          manual();
        }
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    $all("input[type=file][data-fill]").forEach(function (input) {
      input.addEventListener("change", function () {
        var area = document.getElementById(input.getAttribute("data-fill"));
        var file = input.files && input.files[0];
        if (!area || !file) { return; }
        file.text().then(function (text) {
          area.value = text;
          var form = input.form;
          if (form && form.hasAttribute("data-fetch")) { submit(form); }
        });
      });
    });
    $all("textarea[data-book]").forEach(function (area) {
      if (!area.value) { area.value = store.get(); }
      // Nothing kept from the Book page: show the box to paste into.
      var d = area.closest("details[data-open-when-empty]");
      if (d && !area.value) { d.open = true; }
    });
    $all("form[data-fetch]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        var by = ev.submitter;
        if (by && by.hasAttribute("data-no-fetch")) { return; } // a download: the browser's own post
        ev.preventDefault();
        submit(form, by);
      });
      if (form.hasAttribute("data-live")) {
        var timer = null;
        var mark = function (el) {
          if (el.hasAttribute && el.hasAttribute("data-default")) {
            el.classList.toggle("changed", el.value !== el.getAttribute("data-default"));
          }
        };
        form.addEventListener("input", function (ev) {
          mark(ev.target);
          if (ev.target.hasAttribute && ev.target.hasAttribute("data-book")) { return; }
          clearTimeout(timer);
          timer = setTimeout(function () { submit(form); }, 150);
        });
        form.addEventListener("reset", function () {
          setTimeout(function () {
            $all("input[data-default]", form).forEach(mark);
            submit(form);
          }, 0);
        });
      }
      var book = $("textarea[data-book]", form);
      if (form.hasAttribute("data-autosubmit") && book && book.value.trim() !== "") {
        var id = $("input[name=id]", form);
        if (!id || id.value.trim() !== "") { submit(form); }
      }
    });
    wire(document);
  });
})();
