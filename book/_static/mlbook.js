// The book's own script. Loaded in the page head, before the theme's deferred scripts.
(function () {
  // A first visit has no stored colour mode; the theme would log an error and fall back to
  // "auto". Say "auto" ourselves.
  if (!document.documentElement.dataset.mode) {
    document.documentElement.dataset.mode = "auto";
  }

  // The theme binds its sidebar buttons' click handlers to the first button of each kind, a
  // hidden one in the top bar. The visible buttons forward their clicks to it, so the menu and
  // the contents open and close on phones, tablets and desktops alike.
  function forwardToggles() {
    ["primary-toggle", "secondary-toggle"].forEach(function (kind) {
      var buttons = document.querySelectorAll("." + kind);
      for (var k = 1; k < buttons.length; k++) {
        buttons[k].addEventListener("click", function (event) {
          event.preventDefault();
          event.stopImmediatePropagation();
          buttons[0].click();
        }, true);
      }
    });
  }

  // Inline formulas wider than their line scroll inside themselves (see mlbook.css).
  function markWideMath() {
    document.querySelectorAll("span.math").forEach(function (span) {
      span.classList.remove("mlbook-wide");
      var formula = span.querySelector("mjx-container");
      var block = span.closest("p, li, dd, td, th, figcaption, div") || span.parentElement;
      if (formula && formula.getBoundingClientRect().width > block.clientWidth) {
        span.classList.add("mlbook-wide");             // wider than the whole line it sits on
      }
    });
  }

  // Boxes that scroll sideways say so: the edge with hidden content fades (see mlbook.css).
  var SCROLLERS = "div.math mjx-container, span.math.mlbook-wide, .mlbook-table, " +
                  "div.cell_input pre, div.cell_output pre, .pst-scrollable-table-container";
  function cue(box) {
    var hidden = box.scrollWidth - box.clientWidth;
    box.classList.toggle("mlbook-more-left", hidden > 1 && box.scrollLeft > 1);
    box.classList.toggle("mlbook-more-right", hidden > 1 && box.scrollLeft < hidden - 1);
  }
  function cueAll() {
    document.querySelectorAll(SCROLLERS).forEach(function (box) {
      if (!box.dataset.mlbookCue) {
        box.dataset.mlbookCue = "1";
        box.addEventListener("scroll", function () { cue(box); }, { passive: true });
      }
      cue(box);
    });
  }

  // Measure once the formulas are typeset, and again after every resize. The count of
  // measurements is left on the page (data-mlbook-measured) so that a test can wait for it.
  var measured = 0;
  function measure() {
    markWideMath();
    cueAll();
    document.documentElement.dataset.mlbookMeasured = String(++measured);
  }

  document.addEventListener("DOMContentLoaded", forwardToggles);
  window.addEventListener("load", function () {
    var typeset = window.MathJax && MathJax.startup && MathJax.startup.promise;
    (typeset || Promise.resolve()).then(measure);
    var timer;
    window.addEventListener("resize", function () {
      clearTimeout(timer);
      timer = setTimeout(measure, 150);
    });
    // Folded code opens later: measure what a click reveals.
    document.addEventListener("toggle", function () { setTimeout(cueAll, 50); }, true);
    document.addEventListener("click", function () { setTimeout(cueAll, 300); });
  });
})();
