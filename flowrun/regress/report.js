// flowrun test report: filters by grade and cause (kept in the address's #fragment), the blink comparison,
// image size, copy buttons for accept commands, and #selfcheck: what the page shows, for the browser test.
"use strict";
(function () {
  const rows = Array.from(document.querySelectorAll("tr.cell"));
  const boxes = Array.from(document.querySelectorAll("#filters input[name]"));
  const autoblink = document.getElementById("autoblink");
  const size = document.getElementById("size");

  function wanted(name) {
    return new Set(boxes.filter((b) => b.name === name && b.checked).map((b) => b.value));
  }

  function applyFilters() {
    const grades = wanted("grade"), causes = wanted("cause");
    for (const row of rows) row.hidden = !(grades.has(row.dataset.grade) && causes.has(row.dataset.cause));
    document.getElementById("shown-count").textContent = rows.filter((r) => !r.hidden).length;
    selfCheck();
  }

  // #grade=fail,warn&cause=graph shows only those; a name left out shows all of its kind
  function readFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    for (const name of ["grade", "cause"]) {
      const values = new Set((params.get(name) || "").split(","));
      for (const b of boxes) if (b.name === name) b.checked = !params.has(name) || values.has(b.value);
    }
  }

  function writeFragment() {
    const parts = [];
    for (const name of ["grade", "cause"]) {
      const all = boxes.filter((b) => b.name === name);
      const on = all.filter((b) => b.checked).map((b) => b.value);
      if (on.length < all.length) parts.push(name + "=" + on.join(","));
    }
    try {
      history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname + location.search);
    } catch (e) { /* some browsers refuse history changes on file:// pages; the filters still apply */ }
  }

  // blink: golden and new stacked in one place, one of them visible; switches by itself while
  // "blink automatically" is on, and a click holds a row and switches it by hand
  const blinks = [];
  function show(blink, index) {
    blink.index = index;
    blink.images.forEach((img, i) => img.classList.toggle("off", i !== index));
    blink.label.textContent = ["golden", "new"][index] + (blink.held ? " (held: click to switch)" : "");
  }
  for (const row of rows) {
    const golden = row.querySelector("img.golden"), fresh = row.querySelector("img.new");
    const cell = row.querySelector("td.blink");
    if (!golden || !fresh || !cell) continue;
    const button = document.createElement("button");
    button.type = "button";
    button.title = "golden and new in one place: click to hold and switch";
    const images = [golden, fresh].map((source) => {
      const img = document.createElement("img");
      img.src = source.src;
      img.alt = source.alt;
      return img;
    });
    const label = document.createElement("span");
    button.append(...images, label);
    cell.append(button);
    const blink = { images, label, index: 0, held: false };
    button.addEventListener("click", () => { blink.held = true; show(blink, 1 - blink.index); });
    show(blink, 0);
    blinks.push(blink);
  }
  let ticks = 0;
  setInterval(() => {
    if (!autoblink.checked) return;
    for (const blink of blinks) {
      if (!blink.held && !blink.label.closest("tr").hidden) show(blink, 1 - blink.index);
    }
    document.getElementById("selfcheck").dataset.blinkTicks = ++ticks;
  }, 700);
  autoblink.addEventListener("change", () => {
    for (const blink of blinks) { blink.held = false; show(blink, blink.index); }
  });

  // nearest-neighbour scaling keeps small renders' pixels sharp; images shown smaller than they are
  // are smoothed instead, except differences, which are drawn for nearest-neighbour scaling
  function applySize() {
    const px = size.value === "full" ? Infinity : Number(size.value);
    document.body.style.setProperty("--img", size.value === "full" ? "auto" : px + "px");
    for (const img of document.querySelectorAll("td img:not(.diff)")) {
      img.classList.toggle("smooth", img.naturalWidth > px);
    }
  }

  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", () => {
      const text = button.parentElement.querySelector("code").textContent;
      const done = (word) => { button.textContent = word; setTimeout(() => { button.textContent = "copy"; }, 1500); };
      const bySelection = () => {
        const range = document.createRange();
        range.selectNodeContents(button.parentElement.querySelector("code"));
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        done(document.execCommand("copy") ? "copied" : "selected: press Ctrl+C");
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(() => done("copied"), bySelection);
      } else {
        bySelection();
      }
    });
  }

  function selfCheck() {
    const images = Array.from(document.images);
    const tally = {};
    for (const row of rows) {
      for (const key of ["grade:" + row.dataset.grade, "cause:" + row.dataset.cause]) tally[key] = (tally[key] || 0) + 1;
    }
    const shown = {};
    for (const el of document.querySelectorAll("[data-count]")) shown[el.dataset.count] = Number(el.textContent);
    Object.assign(document.getElementById("selfcheck").dataset, {
      images: images.length,
      imagesLoaded: images.filter((img) => img.complete && img.naturalWidth > 0).length,
      rows: rows.length,
      shownRows: rows.filter((r) => !r.hidden).length,
      rowCounts: JSON.stringify(tally),
      shownCounts: JSON.stringify(shown),
      loaded: document.readyState === "complete" ? "yes" : "no",
    });
  }

  for (const b of boxes) b.addEventListener("change", () => { applyFilters(); writeFragment(); });
  size.addEventListener("change", applySize);
  window.addEventListener("hashchange", () => { readFragment(); applyFilters(); });
  window.addEventListener("load", () => { applySize(); selfCheck(); });
  readFragment();
  applyFilters();
})();
