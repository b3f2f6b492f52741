// The steered-program viewer of report.html: filters by phase, method, direction, coefficient and outcome, kept in the
// URL's hash (#method=sae_latent&outcome=pass-%3Efail) so that a view can be linked to, and read back by the test.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("examples-data").textContent);
  const FILTERS = ["phase", "method", "direction", "coefficient", "outcome"];
  const PAGE = 100;
  const state = {};
  let limit = PAGE;
  const cards = document.getElementById("cards");
  const shown = document.getElementById("shown");
  const more = document.getElementById("more");

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function readHash() {
    FILTERS.forEach(function (name) { state[name] = "all"; });
    new URLSearchParams(location.hash.slice(1)).forEach(function (value, name) {
      if (FILTERS.indexOf(name) >= 0) state[name] = value;
    });
    FILTERS.forEach(function (name) { document.getElementById("filter-" + name).value = state[name]; });
  }

  function writeHash() {
    const params = new URLSearchParams();
    FILTERS.forEach(function (name) { if (state[name] !== "all") params.set(name, state[name]); });
    history.replaceState(null, "", "#" + params.toString());
  }

  function fillSelect(name) {
    const select = document.getElementById("filter-" + name);
    const values = Array.from(new Set(data.examples.map(function (e) { return String(e[name]); }))).sort();
    ["all"].concat(values).forEach(function (value) {
      const option = element("option", "", value);
      option.value = value;
      select.appendChild(option);
    });
    select.addEventListener("change", function () {
      state[name] = select.value;
      limit = PAGE;
      writeHash();
      render();
    });
  }

  function code(text, changed, side) {
    const pre = element("pre", "code " + side);
    const marked = new Set(changed);
    text.replace(/\n$/, "").split("\n").forEach(function (line, index) {  // the lines difflib numbered
      pre.appendChild(element("span", marked.has(index) ? "line " + (side === "before" ? "removed" : "added") : "line",
                              line || " "));
    });
    return pre;
  }

  function badge(passed) {
    return element("span", "badge " + (passed ? "pass" : "fail"), passed ? "pass" : "fail");
  }

  function card(example) {
    const article = element("article", "card outcome-" + example.outcome.replace(/[^a-z]+/g, "-"));
    const head = element("header", "card-head");
    head.appendChild(element("span", "tag", "phase " + example.phase));
    head.appendChild(element("span", "tag method", example.method));
    if (example.direction) head.appendChild(element("span", "tag", example.direction));
    head.appendChild(element("span", "tag", example.coefficient));
    head.appendChild(element("span", "tag", "task " + example.task));
    head.appendChild(badge(example.before));
    head.appendChild(element("span", "arrow", "→"));
    head.appendChild(badge(example.after));
    head.appendChild(element("span", "outcome", example.before !== example.after ? "flipped" : "unchanged"));
    article.appendChild(head);
    const sides = element("div", "sides");
    const before = element("div", "side");
    before.appendChild(element("h4", "", "unsteered"));
    before.appendChild(code(data.baselines[example.baseline], example.changed_before, "before"));
    const after = element("div", "side");
    after.appendChild(element("h4", "", "steered" + (example.error ? " (" + example.error + ")" : "")));
    after.appendChild(code(example.code, example.changed_after, "after"));
    sides.appendChild(before);
    sides.appendChild(after);
    article.appendChild(sides);
    return article;
  }

  function render() {
    const matching = data.examples.filter(function (example) {
      return FILTERS.every(function (name) { return state[name] === "all" || String(example[name]) === state[name]; });
    });
    cards.replaceChildren.apply(cards, matching.slice(0, limit).map(card));
    shown.textContent = "showing " + Math.min(limit, matching.length) + " of " + matching.length +
      " matching programs (" + data.examples.length + " in all)";
    more.hidden = matching.length <= limit;
  }

  FILTERS.forEach(fillSelect);
  more.addEventListener("click", function () { limit += PAGE; render(); });
  window.addEventListener("hashchange", function () { readHash(); limit = PAGE; render(); });
  readHash();
  render();
})();
