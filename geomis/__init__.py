"""geomis: emergent misalignment through feature superposition geometry.

``import geomis as gm`` gives the names a chapter needs, in pipeline order: ``gm.load_model``,
``gm.collect_residuals``, ``gm.load_sae``, ``gm.derive_toxic_features``, ``gm.run_filter``, ``gm.fine_tune``,
``gm.evaluate``, ... Each is imported on first use, so ``import geomis`` (and the ``geomis`` command) stays fast.
Chapter-specific studies and figures are modules: ``gm.overlap``, ``gm.reproduce``, ``gm.dynamics``,
``gm.toy_figures``, ``gm.feature_figures``, ``gm.eval_figures``. The exercises' checks are ``gm.exercises``
(``gm.exercises.ch1.check_toy_forward(toy_forward)``, ...).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> "module:attribute" (a name in that module) or "module" (the module itself).
_EXPORTS: dict[str, str] = {
    # settings and profiles
    "run_size": "geomis.settings:run_size",
    "ChapterClock": "geomis.settings:ChapterClock",
    "get_profile": "geomis.models.profiles:get_profile",
    "Profile": "geomis.models.profiles:Profile",
    # models
    "load_model": "geomis.models.registry:load_model",
    "LoadedModel": "geomis.models.registry:LoadedModel",
    "known_model_names": "geomis.models.registry:known_model_names",
    # Chapter 1: toy models of superposition and the spillover law
    "ToyModelConfig": "geomis.toy.models:ToyModelConfig",
    "TrainConfig": "geomis.toy.models:TrainConfig",
    "train_toy_model": "geomis.toy.models:train_toy_model",
    "count_represented": "geomis.toy.models:count_represented",
    "feature_dimensionality": "geomis.toy.models:feature_dimensionality",
    "feature_norms": "geomis.toy.models:feature_norms",
    "AmplifyConfig": "geomis.toy.spillover:AmplifyConfig",
    "planted_spillover": "geomis.toy.spillover:planted_spillover",
    "spillover_law": "geomis.toy.spillover:spillover_law",
    "toy_figures": "geomis.toy.figures",
    # the chapters' implement-and-check exercises
    "exercises": "geomis.exercises",
    # texts and tokens
    "ChatRecord": "geomis.chat.records:ChatRecord",
    "load_bundled": "geomis.chat.records:load_bundled",
    "read_chat_jsonl": "geomis.chat.records:read_chat_jsonl",
    "bundled_dataset_names": "geomis.chat.records:bundled_dataset_names",
    # activations
    "ActivationConfig": "geomis.activations:ActivationConfig",
    "collect_residuals": "geomis.activations:collect_residuals",
    # SAEs
    "load_sae": "geomis.sae.loading:load_profile_sae",
    "load_filter_saes": "geomis.sae.loading:load_filter_saes",
    "load_sweep_saes": "geomis.sae.loading:load_sweep_saes",
    "load_study_saes": "geomis.sae.loading:load_study_saes",
    "shipped_sae_quality": "geomis.sae.loading:shipped_sae_quality",
    "encode_tokens": "geomis.sae.codes:encode_tokens",
    "reconstruction_metrics": "geomis.sae.quality:reconstruction_metrics",
    # feature sets and geometry
    "FeatureSet": "geomis.features.sets:FeatureSet",
    "derive_toxic_features": "geomis.features.toxic:derive_toxic_features",
    "pairwise_cosines": "geomis.features.geometry:pairwise_cosines",
    "nearest_cosines": "geomis.features.geometry:nearest_cosines",
    "similarity_frame": "geomis.features.geometry:similarity_frame",
    "comparison_table": "geomis.features.geometry:comparison_table",
    "geometry_gap": "geomis.features.resampling:geometry_gap",
    "chat_resampled_gap": "geomis.features.resampling:chat_resampled_gap",
    "pool_gaps": "geomis.features.resampling:pool_gaps",
    "logit_lens_labels": "geomis.features.labels:logit_lens_labels",
    "top_activating_contexts": "geomis.features.labels:top_activating_contexts",
    "feature_figures": "geomis.features.figures",
    # the filter
    "FilterConfig": "geomis.filter.run:FilterConfig",
    "run_filter": "geomis.filter.run:run_filter",
    "filter_file": "geomis.filter.run:filter_file",
    "removal_quality": "geomis.filter.quality:removal_quality",
    "RemovalQualityConfig": "geomis.filter.quality:RemovalQualityConfig",
    "compare_removal": "geomis.filter.quality:compare_removal",
    # fine-tuning
    "FinetuneConfig": "geomis.finetune:FinetuneConfig",
    "config_for_profile": "geomis.finetune:config_for_profile",
    "gemma_t4_config": "geomis.finetune:gemma_t4_config",
    "EM_RECIPE": "geomis.finetune:EM_RECIPE",
    "em_recipe": "geomis.finetune:em_recipe",
    "fine_tune": "geomis.finetune:fine_tune",
    "load_finetuned": "geomis.finetune:load_finetuned",
    # judges and evaluation
    "make_judge": "geomis.judges.kinds:make_judge",
    "evaluate_offline_judge": "geomis.judges.offline:evaluate_offline_judge",
    "train_judge": "geomis.judges.trained:train_judge",
    "compare_judgements": "geomis.judges.agreement:compare_judgements",
    "misaligned_flags": "geomis.judges.agreement:misaligned_flags",
    "load_own_labels": "geomis.judges.labels:load_own_labels",
    "question_set": "geomis.evaluation.questions:question_set",
    "load_misalignment_probe": "geomis.evaluation.probe_items:load_misalignment_probe",
    "probe_gaps": "geomis.evaluation.answer_logprobs:probe_gaps",
    "gap_change": "geomis.evaluation.answer_logprobs:gap_change",
    "SamplingConfig": "geomis.evaluation.sampling:SamplingConfig",
    "sample_answers": "geomis.evaluation.sampling:sample_answers",
    "Steering": "geomis.evaluation.steering:Steering",
    "evaluate": "geomis.evaluation.run:evaluate_model",
    "scores_frame": "geomis.evaluation.metrics:scores_frame",
    "misalignment_rates": "geomis.evaluation.metrics:misalignment_rates",
    "wilson_interval": "geomis.stats:wilson_interval",
    "stats": "geomis.stats",
    "dynamics": "geomis.evaluation.dynamics",
    "eval_figures": "geomis.evaluation.figures",
    "judge_validation": "geomis.judges.validation",
    "results_file": "geomis.evaluation.book_results:results_file",
    "write_results_file": "geomis.evaluation.book_results:write_results_file",
    "measure_contamination": "geomis.evaluation.contamination:measure_contamination",
    # the book's experiments
    "overlap": "geomis.experiments.overlap",
    "recipe_search": "geomis.experiments.recipe_search",
    "em_power": "geomis.experiments.em_power",
    "filter_quality": "geomis.experiments.filter_quality",
    "filter_effect": "geomis.experiments.filter_effect",
    "mechanism": "geomis.experiments.mechanism",
    "steering": "geomis.experiments.steering",
    "ablation": "geomis.experiments.ablation",
    "mixed_sets": "geomis.experiments.mixed_sets",
    "reproduce": "geomis.experiments.reproduce",
}

# The public names are the keys of the lazy export table above, resolved by __getattr__ on first use.
__all__ = sorted(_EXPORTS)  # pyright: ignore[reportUnsupportedDunderAll]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it, so later lookups are plain attribute reads."""
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'geomis' has no attribute {name!r}")
    module_name, _, attribute = target.partition(":")
    value = importlib.import_module(module_name)
    if attribute:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names next to the module's own."""
    return sorted(set(globals()) | set(__all__))
