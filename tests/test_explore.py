"""The circuit explorer (circuitdag.explore), the attention patterns stored with a circuit
(circuitdag.attention) and the layer-activations view (circuitdag.activations). The pages
are opened in a real headless Chromium (tests/browser.py)."""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
import torch
from browser import browser, console_errors, open_page  # noqa: F401 (browser is a fixture)

import circuitdag as cd
from circuitdag import attention
from circuitdag.attribution import attribute
from circuitdag.cli import main
from circuitdag.discovery import attribution_circuit
from circuitdag.explore import explorer_data, explorer_html, slider_steps
from circuitdag.io import load_circuit
from circuitdag.models import load_model
from circuitdag.prepare import prepare


@pytest.fixture(scope="module")
def zoo_pronoun():
    return load_model("pronoun")


@pytest.fixture(scope="module")
def pos_circuit(zoo_pronoun):
    """The position-aware pronoun circuit of the zoo model (task defaults: 6 edges)."""
    return cd.acdc(zoo_pronoun, "pronoun", positions=True)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------- stored attention patterns
def test_attention_record_is_the_clean_runs_pattern(pos_circuit, zoo_pronoun):
    """Rows are distributions over earlier keys (causal), the tokens are the task's clean
    prompts, and every head of the small model is stored."""
    rec = pos_circuit.meta["attention"]
    assert rec["format"] == "circuitdag.attention/1" and rec["heads_stored"] == "all"
    assert sorted(rec["heads"]) == [f"a{L}.{h}" for L in range(2) for h in range(4)]
    assert len(rec["prompts"]) == attention.N_PROMPTS
    assert rec["prompts"][0][:4] == ["<|endoftext|>", "So", "John", "is"] and rec["prompts"][0][-1] == "'t"
    for pats in rec["heads"].values():
        for i, pat in enumerate(pats):
            a = np.array(pat)
            assert a.shape == (len(rec["prompts"][i]),) * 2
            np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=6e-3)  # 3-decimal rounding
            assert np.all(np.triu(a, 1) == 0)


def test_large_models_store_only_the_circuits_heads(pos_circuit, zoo_pronoun, monkeypatch):
    monkeypatch.setattr(attention, "MAX_VALUES", 10)
    data = cd.tasks.load_data(cd.tasks.get("pronoun"), zoo_pronoun)
    rec = attention.attention_record(zoo_pronoun, pos_circuit.graph, data.clean, data.answer_pos,
                                     pos_circuit.in_circuit)  # fmt: skip
    assert rec["heads_stored"] == "circuit"
    assert set(rec["heads"]) == {n.split("@")[0] for n in pos_circuit.node_names if n.startswith("a")} == {"a0.1"}


def test_attention_survives_circuit_json_and_old_files_still_load(pos_circuit, tmp_path):
    path = tmp_path / "c.json"
    pos_circuit.save(path)
    assert load_circuit(path).meta["attention"] == json.loads(json.dumps(pos_circuit.meta["attention"]))
    doc = json.loads(path.read_text())
    del doc["attention"]  # as written before patterns were stored
    path.write_text(json.dumps(doc))
    old = load_circuit(path)
    assert old.same_as(pos_circuit) and explorer_data(old)["attention"] is None


# ---------------------------------------------------------------------- the slider's edge sets
def test_slider_at_the_runs_threshold_is_the_circuit(pos_circuit):
    values, first, run_step = slider_steps(pos_circuit)
    assert values[run_step] == pos_circuit.meta["threshold"] and values == sorted(values, reverse=True)
    np.testing.assert_array_equal((first >= 0) & (first <= run_step), pos_circuit.in_circuit)
    d = explorer_data(pos_circuit)
    assert d["run_step_is_circuit"] and sum(e["in_circuit"] for e in d["edges"]) == pos_circuit.n_edges == 6


def test_slider_steps_are_the_attribution_circuits_at_those_thresholds(zoo_pronoun):
    """Each slider step of an EAP circuit is exactly the circuit attribution_circuit makes
    at the step's threshold."""
    patcher, meta = prepare(zoo_pronoun, cd.tasks.get("pronoun"))
    att = attribute(patcher, "eap")
    circuit = attribution_circuit(patcher, "eap", n_edges=20, scores=att, meta=meta)
    values, first, run_step = slider_steps(circuit, max_steps=12)
    assert len(values) <= 13 and run_step is not None  # 12 sampled scores and the run's own
    np.testing.assert_array_equal((first >= 0) & (first <= run_step), circuit.in_circuit)  # top 20, pruned
    for i in (0, 3, run_step, len(values) - 1):
        want = attribution_circuit(patcher, "eap", threshold=values[i], scores=att).in_circuit
        np.testing.assert_array_equal((first >= 0) & (first <= i), want)


# ---------------------------------------------------------------------- the page
def test_page_is_self_contained(pos_circuit):
    page = explorer_html(pos_circuit)
    assert "<script src" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "Cytoscape.js 3.35.0" in page and page.count("</script>") == 3
    frame = pos_circuit._repr_html_()
    srcdoc = re.match(r'<iframe srcdoc="([^"]*)"', frame)
    assert srcdoc is not None and html.unescape(srcdoc.group(1)) == page


def test_explore_command(pos_circuit, tmp_path, capsys):
    pos_circuit.save(tmp_path / "circuit.json")
    code, out, err = run(capsys, "explore", str(tmp_path / "circuit.json"))
    assert code == 0, err
    assert out.strip() == str(tmp_path / "circuit.html") and (tmp_path / "circuit.html").stat().st_size > 400_000
    code, _, err = run(capsys, "explore", str(tmp_path / "missing.json"))
    assert code == 2 and err.startswith("circuitdag: error: cannot read") and err.count("\n") == 1


def test_explorer_in_a_browser(pos_circuit, browser, tmp_path):  # noqa: F811
    """The issue's acceptance test: no console errors, as many drawn edges as the circuit
    has, the slider changes the count (to the sets computed in Python), clicking a head
    shows its attention pattern."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    path = tmp_path / "explore.html"
    pos_circuit.to_html(path)
    open_page(browser, path)
    drawn = lambda: browser.execute_script("return window.circuitdagExplorer.drawnEdges()")
    assert console_errors(browser) == []
    assert drawn() == pos_circuit.n_edges == int(browser.find_element(By.ID, "edge-count").text)

    _, first, run_step = slider_steps(pos_circuit)
    slider = browser.find_element(By.ID, "threshold-slider")
    slider.send_keys(Keys.ARROW_RIGHT)  # one step looser
    assert drawn() == int(((first >= 0) & (first <= run_step + 1)).sum()) > pos_circuit.n_edges
    slider.send_keys(Keys.HOME)  # the strictest step
    assert drawn() == int((first == 0).sum()) < pos_circuit.n_edges
    assert int(browser.find_element(By.ID, "edge-count").text) == drawn()
    browser.find_element(By.ID, "show-circuit").click()
    assert drawn() == pos_circuit.n_edges

    # A real mouse click on the head's node in the canvas.
    head = "a0.1@'t"
    x, y = browser.execute_script(
        "const p = window.circuitdagExplorer.cy.getElementById(arguments[0]).renderedPosition(); return [p.x, p.y];", head
    )
    canvas = browser.find_element(By.ID, "graph")
    w, h = canvas.size["width"], canvas.size["height"]
    ActionChains(browser).move_to_element_with_offset(canvas, int(x - w / 2), int(y - h / 2)).click().perform()
    tables = browser.find_elements(By.CSS_SELECTOR, "#details table.attn")
    prompts = pos_circuit.meta["attention"]["prompts"]
    assert len(tables) == len(prompts) and tables[0].get_attribute("data-head") == "a0.1"
    assert len(tables[0].find_elements(By.CSS_SELECTOR, "td.cell")) == len(prompts[0]) ** 2
    outlined = tables[0].find_element(By.CSS_SELECTOR, "tr.query-row th").text
    assert outlined == "'t"  # the clicked node's query position
    assert "embed@name" in browser.find_element(By.ID, "details").text  # its input, highlighted
    assert console_errors(browser) == []


# ---------------------------------------------------------------------- layer activations
def test_layer_activations_match_plain_transformers(zoo_pronoun):
    """Neuron activations equal the GELU outputs of the same model run through plain
    transformers; head norms equal ``|z_h W_O[h]|``; the neurons shown are the top ones."""
    from circuitdag.activations import layer_activations
    from circuitdag.models.zoo import load_hf

    text = "So John is a really great friend, isn't"
    acts = layer_activations(zoo_pronoun, text, top=5)
    hf, tok = load_hf("pronoun")
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert acts.tokens == [tok.decode([i]) for i in ids[0].tolist()] and acts.tokens[0] == "<|endoftext|>"
    got: dict[int, torch.Tensor] = {}
    hooks = [blk.mlp.act.register_forward_hook(lambda m, i, o, L=L: got.__setitem__(L, o[0]))
             for L, blk in enumerate(hf.transformer.h)]  # fmt: skip
    with torch.no_grad():
        hf(ids)
    for hk in hooks:
        hk.remove()
    for L in range(2):
        full = got[L].double().numpy()
        np.testing.assert_allclose(acts.neurons[L], full[:, acts.neuron_ids[L]], atol=1e-4)
        peak = np.abs(full).max(axis=0)
        assert peak[acts.neuron_ids[L]].min() >= np.delete(peak, acts.neuron_ids[L]).max()
    _, cache = zoo_pronoun.run_with_cache(ids, names_filter=lambda n: n.endswith("attn.hook_z"))
    for L in range(2):
        z = cache[f"blocks.{L}.attn.hook_z"][0].double()  # pos head d_head
        W_O = zoo_pronoun.blocks[L].attn.W_O.detach().double()  # head d_head d_model
        want = torch.einsum("phd,hdm->phm", z, W_O).norm(dim=-1).numpy()
        np.testing.assert_allclose(acts.heads[L], want, rtol=1e-4, atol=1e-5)


def test_activations_command_and_page(browser, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "act.html"
    code, _, err = run(capsys, "activations", "--model", "pronoun", "--text", "So Mary is a really great friend, isn't",
                            "-o", str(out), "--top", "8")  # fmt: skip
    assert code == 0, err
    open_page(browser, out)
    assert console_errors(browser) == []
    traces = browser.execute_script(
        "return document.querySelector('.js-plotly-plot').data.map(t => [t.type, t.x.length, t.y.length]);"
    )
    n_tok = 11  # BOS and 10 tokens
    assert traces == [["heatmap", 8, n_tok], ["heatmap", 4, n_tok]] * 2
    code, _, err = run(capsys, "activations", "--model", "pronoun", "--text", "  ", "-o", str(out))
    assert code == 2 and "--text is empty" in err
    code, _, err = run(capsys, "activations", "--model", "pronoun", "--text", "So", "--top", "0", "-o", str(out))
    assert code == 2 and "--top must be >= 1" in err


# ---------------------------------------------------------------------- the sweep report
def test_sweep_report_in_a_browser(browser, tmp_path, capsys):  # noqa: F811
    """The sweep page (circuitdag.sweep.page, plotly) in Chromium: no console errors, every
    completed trial plotted (a front point stands for the trials that found its circuit),
    and a click on a front point opens that circuit's explorer page."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out = tmp_path / "sweep"
    code, _, err = run(capsys, "sweep", "--task", "pronoun", "--search", "threshold,ablation", "--ablation",
                       "zero,resample", "--threshold-range", "0.01", "5", "--trials", "8", "--sampler-seed", "0",
                       "--out", str(out), "-q", "--threads", "1")  # fmt: skip
    assert code == 0, err
    doc = json.loads((out / "pareto.json").read_text())
    open_page(browser, out / "sweep.html")
    assert console_errors(browser) == []
    traces = browser.execute_script(
        "return document.getElementById('pareto-plot').data.map(t => [t.uid, t.customdata.map(d => d[0])]);"
    )
    drawn = browser.execute_script("return document.querySelectorAll('#pareto-plot .scatterlayer path.point').length")
    assert drawn == sum(len(ts) for _, ts in traces)  # plotly drew every point it was given
    stands_for = {p["trial"]: p["trials"] for p in doc["points"]}
    off_front = [t for uid, ts in traces if uid != "front" for t in ts]
    front = dict(traces)["front"]
    assert off_front and sorted(front) == sorted(stands_for)
    plotted = off_front + [t for p in front for t in stands_for[p]]
    assert sorted(plotted) == list(range(doc["trials"]["complete"])) == list(range(8))

    # A real click on the front's last point opens its circuit's explorer in a new window.
    page = browser.current_window_handle
    point = browser.find_elements(By.CSS_SELECTOR, "#pareto-plot g.tracefront path.point")[-1]
    ActionChains(browser).move_to_element(point).click().perform()
    WebDriverWait(browser, 20).until(lambda d: len(d.window_handles) == 2)
    browser.switch_to.window(next(h for h in browser.window_handles if h != page))
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return !!window.circuitdagExplorer"))
    circuit = load_circuit(out / "trials" / str(front[-1]) / "circuit.json")
    assert browser.execute_script("return window.circuitdagExplorer.drawnEdges()") == circuit.n_edges
    assert console_errors(browser) == []
    browser.close()
    browser.switch_to.window(page)
