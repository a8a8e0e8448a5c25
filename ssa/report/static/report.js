// ssa report: the class filter and the picture toggle. Reads only files beside the pages
// (<script src> of data/class-<id>-<page>.js); every name is written with textContent.
(function () {
  "use strict";
  var SSA = (window.SSA = window.SSA || {});

  function pad(n) { return ("00000" + n).slice(-6); }

  function parseHash() {
    var out = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (part) {
      var kv = part.split("=");
      if (kv[0]) out[kv[0]] = decodeURIComponent(kv[1] || "");
    });
    return out;
  }

  function cardElement(c, label, unit) {
    var a = document.createElement("a");
    a.className = "card";
    a.href = "images/" + pad(c.index) + ".html";
    var img = document.createElement("img");
    img.src = "thumbs/" + pad(c.index) + ".jpg";
    img.alt = c.name;
    var name = document.createElement("span");
    name.className = "name";
    name.textContent = c.name;
    var measure = document.createElement("span");
    measure.className = "measure";
    var value = c.value === null ? "—" : c.value.toFixed(2) + unit;
    measure.textContent = label + " " + value + " · " + c.masks + " masks";
    a.appendChild(img); a.appendChild(name); a.appendChild(measure);
    return a;
  }

  // Called by data/class-<id>-<page>.js.
  SSA.show = function (data) {
    var box = document.getElementById("class-cards");
    if (!box) return;
    var label = box.getAttribute("data-measure"), unit = box.getAttribute("data-unit");
    box.textContent = "";
    data.cards.forEach(function (c) { box.appendChild(cardElement(c, label, unit)); });
    var empty = document.getElementById("class-empty");
    if (empty) empty.hidden = data.cards.length > 0;
    var pager = document.getElementById("class-pager");
    pager.textContent = "";
    function link(page, text) {
      var el;
      if (page === data.page) { el = document.createElement("b"); }
      else { el = document.createElement("a"); el.href = "#c=" + data["class"] + "&p=" + page; }
      el.textContent = text;
      pager.appendChild(el);
    }
    if (data.page > 1) link(data.page - 1, "← previous");
    for (var p = 1; p <= data.pages; p++) {
      if (p <= 3 || p > data.pages - 3 || Math.abs(p - data.page) <= 3) link(p, String(p));
    }
    if (data.page < data.pages) link(data.page + 1, "next →");
    var title = document.getElementById("class-title");
    if (title) title.textContent = "page " + data.page + " of " + data.pages + " · " + data.total + " images";
  };

  function loadClass() {
    var box = document.getElementById("class-cards");
    if (!box) return;
    var h = parseHash(), select = document.getElementById("class-filter");
    if (!/^\d+$/.test(h.c || "")) return;
    var page = /^\d+$/.test(h.p || "") ? parseInt(h.p, 10) : 1;
    var option = select && select.querySelector('option[value="' + h.c + '"]');
    if (!option) return;
    select.value = h.c;
    page = Math.max(1, Math.min(page, parseInt(option.getAttribute("data-pages"), 10)));
    var old = document.getElementById("class-data");
    if (old) old.parentNode.removeChild(old);
    var s = document.createElement("script");
    s.id = "class-data";
    s.src = "data/class-" + h.c + "-" + page + ".js";
    document.body.appendChild(s);
  }

  function setupFilter() {
    var select = document.getElementById("class-filter");
    if (!select) return;
    select.addEventListener("change", function () {
      if (select.value === "") location.href = "gallery-1.html";
      else location.href = "class.html#c=" + select.value + "&p=1";
    });
  }

  function setupToggle() {
    var buttons = document.querySelectorAll(".toggle button");
    var box = document.getElementById("pictures");
    if (!box) return;
    Array.prototype.forEach.call(buttons, function (b) {
      b.addEventListener("click", function () {
        var show = b.getAttribute("data-show");
        Array.prototype.forEach.call(buttons, function (o) { o.classList.toggle("on", o === b); });
        box.classList.toggle("single", show !== "all");
        Array.prototype.forEach.call(box.querySelectorAll("figure"), function (f) {
          f.classList.toggle("hidden", show !== "all" && f.getAttribute("data-kind") !== show);
        });
      });
    });
  }

  setupFilter();
  setupToggle();
  loadClass();
  window.addEventListener("hashchange", loadClass);
})();
