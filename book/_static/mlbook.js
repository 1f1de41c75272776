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
      if (span.scrollWidth > span.clientWidth + 1) {   // wider than the column it may fill
        span.classList.add("mlbook-wide");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", forwardToggles);
  window.addEventListener("load", function () {
    var typeset = window.MathJax && MathJax.startup && MathJax.startup.promise;
    (typeset || Promise.resolve()).then(markWideMath);
    var timer;
    window.addEventListener("resize", function () {
      clearTimeout(timer);
      timer = setTimeout(markWideMath, 150);
    });
  });
})();
