// circuitdag explorer: draws the circuit in #circuit-data with Cytoscape.js (see circuitdag/explore.py).
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("circuit-data").textContent);
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const num = (x) => (x === null || x === undefined ? "untested" : Number(x).toPrecision(4).replace(/\.?0+(e|$)/, "$1"));

  const FILL = { embed: "#e8e8e8", kv: "#d9f0d3", head: "#deebf7", mlp: "#efe3f7", neuron: "#efe3f7", logits: "#e8e8e8" };
  const SHAPE = { embed: "rectangle", kv: "ellipse", head: "ellipse", mlp: "round-rectangle", neuron: "ellipse", logits: "rectangle" };

  const CELL_W = 32, CELL_H = 52;  // px of a half node slot and of a row, at zoom 1
  const elements = [];
  for (const n of data.nodes) elements.push({ group: "nodes", data: Object.assign({}, n), classes: "unit " + n.kind });
  for (const c of data.position_columns) {
    elements.push({ group: "nodes", data: { id: "position:" + c.pos, label: c.name, row: 0, col: c.col, kind: "position" },
      classes: "position", selectable: false });
  }
  for (const e of data.edges) elements.push({ group: "edges", data: Object.assign({}, e) });

  const cy = cytoscape({
    container: $("graph"),
    elements: elements,
    autoungrabify: true,
    boxSelectionEnabled: false,
    style: [
      { selector: "node.unit", style: {
        label: "data(label)", "font-size": 9, "text-valign": "center", "text-halign": "center",
        width: 50, height: 22, "border-width": 1, "border-color": "#888",
        "background-color": (n) => FILL[n.data("kind")] || "#eee", shape: (n) => SHAPE[n.data("kind")] || "ellipse" } },
      { selector: "node.position", style: {
        label: "data(label)", "font-size": 12, "font-weight": "bold", "background-opacity": 0, "border-width": 0,
        width: 10, height: 10, events: "no", "text-valign": "center" } },
      { selector: "edge", style: {
        width: "data(width)", "line-color": "data(colour)", "target-arrow-color": "data(colour)",
        "target-arrow-shape": "triangle", "arrow-scale": 0.8, "curve-style": "bezier",
        // with --bootstrap: the share of reruns that kept the edge (never fully invisible)
        opacity: (e) => (e.data("inclusion") === null || e.data("inclusion") === undefined ? 0.85
          : 0.1 + 0.9 * e.data("inclusion")) } },
      { selector: "edge[bend]", style: {  // an edge that skips rows of its own column arcs around them
        "curve-style": "unbundled-bezier", "control-point-distances": (e) => e.data("bend"), "control-point-weights": 0.5 } },
      { selector: ".hidden", style: { display: "none" } },
      { selector: ".faded", style: { opacity: 0.1 } },
      { selector: "edge.highlight", style: { opacity: 1, "z-index": 10 } },
      { selector: "node.picked", style: { "border-width": 3, "border-color": "#d62728" } },
    ],
    // One grid cell per half node slot and per row, at a fixed size, so that nodes never
    // overlap however many layers there are; the view is then zoomed to fit (scroll to zoom).
    layout: {
      name: "grid", rows: data.grid.rows, cols: data.grid.cols, fit: true, padding: 24,
      avoidOverlap: false, condense: false,
      boundingBox: { x1: 0, y1: 0, w: data.grid.cols * CELL_W, h: data.grid.rows * CELL_H },
      position: (n) => ({ row: n.data("row"), col: n.data("col") }),
    },
  });

  // The first view: the drawn edges at the zoom that fills the width (at most 1.5), the
  // bottom (logits, where a circuit is read from) in view; "fit all" shows everything.
  function initialView() {
    cy.fit(cy.elements().not(".hidden"), 24);
    const bb = cy.elements().not(".hidden").boundingBox();
    const z = Math.min(1.5, (cy.width() - 48) / Math.max(bb.w, 1));
    if (z > cy.zoom() || cy.zoom() > 1.5) {
      cy.zoom(z);
      cy.pan({ x: (cy.width() - bb.w * z) / 2 - bb.x1 * z, y: Math.min(cy.height() - 24 - bb.y2 * z, 24 - bb.y1 * z) });
    }
  }

  // ------------------------------------------------------------------ summary and legend
  $("title").textContent = data.title;
  const facts = [
    ["task", data.task], ["model", data.model], ["algorithm", data.algorithm], ["metric", data.metric],
    ["threshold", data.threshold === null || data.threshold === undefined ? "-" : num(data.threshold)],
    ["edges", data.n_edges + " of " + data.n_edges_total],
    ["faithfulness", data.faithfulness === null ? "n/a" : Number(data.faithfulness).toFixed(3)],
    ...(data.how_sure || []),
    ["score", data.score_meaning],
  ];
  $("summary").innerHTML = "<table>" + facts.map(([k, v]) => "<tr><td><b>" + esc(k) + "</b></td><td>" + esc(v) + "</td></tr>").join("") + "</table>";
  const inputs = [...new Set(data.edges.map((e) => e.input))];
  $("legend").innerHTML = "<h2>Colour = the input an edge feeds</h2>" +
    inputs.map((k) => '<span class="swatch" style="background:' + data.colours[k] + '"></span>' + esc(k)).join("") +
    '<p class="note">Width grows with |score| (1 px: 0 or untested, 6 px: the largest drawn).</p>';

  // ------------------------------------------------------------------ threshold slider
  const slider = $("threshold-slider");
  const steps = data.steps;
  function counts() {
    return cy.edges().not(".hidden").length;
  }
  function show(step) {  // step null: the saved circuit
    cy.batch(() => {
      cy.edges().forEach((e) => {
        const s = e.data("step");
        e.toggleClass("hidden", step === null ? !e.data("in_circuit") : !(s >= 0 && s <= step));
      });
      cy.nodes(".unit").forEach((n) => n.toggleClass("hidden", n.connectedEdges().not(".hidden").length === 0));
    });
    $("edge-count").textContent = String(counts());
    let label;
    if (step === null) label = "the saved circuit (" + data.n_edges + " edges)";
    else label = data.key + " \u2265 " + num(steps[step]) + (step === data.run_step ? " (the run's threshold)" : "");
    $("slider-label").textContent = label;
    if (picked) pick(picked);
  }
  if (steps.length) {
    slider.max = String(steps.length - 1);
    slider.value = String(data.run_step === null ? steps.length - 1 : data.run_step);
    slider.addEventListener("input", () => show(Number(slider.value)));
  } else {
    slider.disabled = true;
  }
  $("slider-note").textContent = (steps.length
    ? "Right: a looser threshold. The edges whose stored " + data.key + " is at least the threshold, pruned to paths from embed to logits" +
      (data.algorithm && data.algorithm.startsWith("acdc") ? "; an estimate: ACDC measures an edge's score after the edges before it are removed, so a new run at another threshold can differ." : ".")
    : "No edge has a score, so there is no threshold to move.") +
    (data.run_step !== null && !data.run_step_is_circuit ? " At the run's threshold the stored scores give another edge set than the saved circuit." : "") +
    (data.edges.length < data.n_edges_total ? " Edges never tested, or beyond the loosest step, are not in this page." : "");
  $("show-circuit").addEventListener("click", () => {
    if (data.run_step !== null) slider.value = String(data.run_step);
    show(null);
  });

  // ------------------------------------------------------------------ hover
  const tip = $("tooltip");
  function nodeStats(n) {
    const inE = n.incomers("edge").not(".hidden"), outE = n.outgoers("edge").not(".hidden");
    const sum = (es) => es.reduce((a, e) => a + (e.data("score") || 0), 0);
    return { inE, outE, inSum: sum(inE), outSum: sum(outE) };
  }
  function nodeText(n) {
    const d = n.data(), st = nodeStats(n);
    return "<b>" + esc(d.id) + "</b><br>" + esc(d.kind) + (d.layer >= 0 && d.kind !== "logits" ? ", layer " + d.layer : "") +
      (d.head >= 0 ? ({ kv: ", key/value head ", neuron: ", neuron " }[d.kind] || ", head ") + d.head : "") +
      (d.pos_name !== null && d.pos_name !== undefined ? ", position " + esc(d.pos_name) + " (" + d.pos + ")" : "") +
      "<br>inputs drawn: " + st.inE.length + " (sum of scores " + num(st.inSum) + ")" +
      "<br>outputs drawn: " + st.outE.length + " (sum of scores " + num(st.outSum) + ")";
  }
  function edgeText(e) {
    const d = e.data();
    return "<b>" + esc(d.id) + "</b><br>input: " + esc(d.input) + "<br>score: " + num(d.score) +
      "<br>" + (d.in_circuit ? "in the saved circuit" : "not in the saved circuit") +
      (d.inclusion === null || d.inclusion === undefined ? "" : "<br>kept by " + Math.round(100 * d.inclusion) +
        "% of " + data.bootstrap + " bootstrap reruns");
  }
  function showTip(evt, text) {
    const box = $("graph").getBoundingClientRect();
    tip.innerHTML = text;
    tip.style.left = box.left + evt.renderedPosition.x + 14 + "px";
    tip.style.top = box.top + evt.renderedPosition.y + 14 + "px";
    tip.style.display = "block";
  }
  cy.on("mouseover", "edge", (evt) => showTip(evt, edgeText(evt.target)));
  cy.on("mouseover", "node.unit", (evt) => showTip(evt, nodeText(evt.target)));
  cy.on("mouseout", "edge, node", () => { tip.style.display = "none"; });

  // ------------------------------------------------------------------ click
  let picked = null;
  function edgeList(es, end) {
    const sorted = es.toArray().sort((a, b) => Math.abs(b.data("score") || 0) - Math.abs(a.data("score") || 0));
    if (!sorted.length) return "<p class=\"note\">none drawn</p>";
    return "<ul>" + sorted.map((e) => "<li>" + esc(e.data(end)) + " &lt;" + esc(e.data("input")) + "&gt; " + num(e.data("score")) + "</li>").join("") + "</ul>";
  }
  function attentionHtml(d) {
    const att = data.attention;
    if (d.kind === "kv") {
      const first = d.head * data.gqa_group;
      return "<p class=\"note\">A key/value head, read by query heads a" + d.layer + "." + first + " to a" + d.layer + "." +
        (first + data.gqa_group - 1) + "; click one of them for its attention pattern.</p>";
    }
    if (d.kind !== "head") return "";
    const key = "a" + d.layer + "." + d.head;
    if (!att) return "<p class=\"note\">No attention patterns are stored with this circuit (it was saved before circuitdag stored them, or imported); rerun <code>circuitdag discover</code> to get them.</p>";
    const pats = att.heads[key];
    if (!pats) return "<p class=\"note\">The pattern of " + esc(key) + " is not stored: for large models only the saved circuit's heads are.</p>";
    let out = "<h2>Attention pattern of " + esc(key) + "</h2><p class=\"note\">Rows: query tokens, columns: key tokens, darker = more attention" +
      (d.pos >= 0 ? "; the row of position " + esc(d.pos_name) + " is outlined" : "") + ". The first " + pats.length + " clean prompts.</p>";
    pats.forEach((pat, i) => {
      const toks = att.prompts[i];
      let t = '<table class="attn" data-head="' + esc(key) + '" data-prompt="' + i + '"><tr><th></th>' +
        toks.map((k) => '<th class="key">' + esc(k) + "</th>").join("") + "</tr>";
      pat.forEach((row, q) => {
        t += "<tr" + (q === d.pos ? ' class="query-row"' : "") + "><th>" + esc(toks[q]) + "</th>" +
          row.map((v, k) => '<td class="cell" style="background:rgba(31,119,180,' + v + ')" title="' +
            esc(toks[q] + " \u2192 " + toks[k] + ": " + v) + '"></td>').join("") + "</tr>";
      });
      out += t + "</table>";
    });
    return '<div class="attention">' + out + "</div>";
  }
  function pick(n) {
    picked = n;
    cy.batch(() => {
      cy.elements().removeClass("faded highlight picked");
      cy.elements().not(".position").addClass("faded");
      const es = n.connectedEdges().not(".hidden");
      es.removeClass("faded").addClass("highlight");
      es.connectedNodes().removeClass("faded");
      n.removeClass("faded").addClass("picked");
    });
    const st = nodeStats(n);
    $("details").innerHTML = "<div>" + nodeText(n) + "</div>" +
      "<h2>Inputs (" + st.inE.length + ")</h2>" + edgeList(st.inE, "source") +
      "<h2>Outputs (" + st.outE.length + ")</h2>" + edgeList(st.outE, "target") + attentionHtml(n.data());
  }
  function unpick() {
    picked = null;
    cy.elements().removeClass("faded highlight picked");
  }
  cy.on("tap", "node.unit", (evt) => pick(evt.target));
  cy.on("tap", (evt) => { if (evt.target === cy) unpick(); });

  show(null);
  initialView();
  $("fit-all").addEventListener("click", () => cy.fit(cy.elements().not(".hidden"), 24));
  window.circuitdagExplorer = { cy: cy, data: data, show: show, pick: pick, drawnEdges: counts };
})();
