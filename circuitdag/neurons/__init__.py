"""The " an" neuron method (Miller & Neo 2023) on any task with a logit difference.

:func:`analyze_neurons` runs every step; each step is a function of its own module:
:mod:`~circuitdag.neurons.lens` (logit lens), :mod:`~circuitdag.neurons.activation_patching`
((layer, position) patching), :mod:`~circuitdag.neurons.neuron_patching` (single neurons),
:mod:`~circuitdag.neurons.dla` (direct logit attribution), :mod:`~circuitdag.neurons.congruence`
(congruence, mutual congruence), :mod:`~circuitdag.neurons.corpus` (activation over text);
:mod:`~circuitdag.neurons.report` writes report.json, report.md and the plots. See
docs/neurons.md.
"""

from __future__ import annotations

from circuitdag.neurons._runs import TaskRuns as TaskRuns
from circuitdag.neurons._runs import cache_runs as cache_runs
from circuitdag.neurons.activation_patching import patch_activations as patch_activations
from circuitdag.neurons.analysis import NeuronAnalysis as NeuronAnalysis
from circuitdag.neurons.analysis import analyze_neurons as analyze_neurons
from circuitdag.neurons.congruence import mutual_congruence as mutual_congruence
from circuitdag.neurons.corpus import corpus_activation as corpus_activation
from circuitdag.neurons.dla import direct_logit_attribution as direct_logit_attribution
from circuitdag.neurons.dla import neuron_dla as neuron_dla
from circuitdag.neurons.lens import logit_lens as logit_lens
from circuitdag.neurons.neuron_patching import patch_neurons as patch_neurons
from circuitdag.neurons.report import write_report as write_report
