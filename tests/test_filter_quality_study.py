"""Chapter 4's filter-quality study: the mixed sets of its design, a resumable CI-size run, and its analysis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geomis.experiments import filter_quality as fq


def test_the_mixed_sets_follow_the_design() -> None:
    config = fq.FilterQualityConfig()
    sizes = {}
    for domain in config.domains:
        mixed = fq.mixed_set(domain, config)
        sizes[domain] = len(mixed)
        assert mixed.inducing.mean() == 0.5
        prompts = [record.user_text for record in mixed.records]
        assert len(set(prompts)) == len(prompts), f"{domain}: a prompt appears twice"
    assert sizes == {"medical": 300, "legal": 240, "career": 240, "code": 200}
    assert "**Design of the filter-quality test**" in (fq.__doc__ or "")
    assert fq.GOAL_PRECISION == 0.75 and fq.PRIMARY_BUDGET == 0.5 and config.n_resamples == 1000


def test_write_section_keeps_the_other_sections(tmp_path: Path) -> None:
    target = tmp_path / "04_geometry_filter.json"
    target.write_text(json.dumps({"fine_tune_effect": {"kept": 1}}))
    fq.write_section(target, {"domains": {}})
    assert json.loads(target.read_text()) == {"fine_tune_effect": {"kept": 1}, "filter_quality": {"domains": {}}}


@pytest.mark.slow
def test_ci_size_scores_resume_and_analyse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fq.main(["--size", "ci", "--out", str(tmp_path)])
    files = sorted(tmp_path.glob("scores.*.csv"))
    assert [f.name for f in files] == [f"scores.{d}.csv" for d in sorted(fq.FilterQualityConfig().domains)]
    stamps = {f: f.stat().st_mtime_ns for f in files}
    frame = pd.read_csv(tmp_path / "scores.medical.csv")
    singles = [c for c in frame.columns if c.startswith("geometry smollm2")]
    assert len(singles) == 3 and len(frame) == 24 and frame["inducing"].sum() == 12
    assert np.allclose(frame["geometry"], frame[singles].mean(axis=1))
    assert (frame["geometry"] <= frame["geometry (self-pairs)"] + 1e-9).all()  # identity only ever adds
    assert frame[["mean-difference", "embedding"]].notna().all().all()
    fq.main(["--size", "ci", "--out", str(tmp_path)])  # resumes: every domain is scored, nothing is redone
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    fq.main(["--size", "ci", "--out", str(tmp_path), "--analyse"])
    section = json.loads((tmp_path / "04_geometry_filter.json").read_text())["filter_quality"]
    medical = section["domains"]["medical"]
    assert set(medical["methods"]) == {*singles, "geometry", "geometry (self-pairs)", "mean-difference", "embedding"}
    assert set(medical["methods"]["geometry"]) == {"0.1", "0.25", "0.5"}
    contrast = medical["contrasts"]["geometry_minus_embedding"]
    assert contrast["low"] <= contrast["high"] and 0 < contrast["p"] <= 1 and contrast["p_bh"] >= contrast["p"]
    expected = (medical["methods"]["geometry"]["0.5"]["precision"]
                - medical["methods"]["embedding"]["0.5"]["precision"])
    assert contrast["difference"] == pytest.approx(expected)
    assert "Benjamini-Hochberg" in section["adjustment"] and section["design"].startswith("(fixed")
    assert section["saes"] == sorted(name.removeprefix("geometry ") for name in singles)


@pytest.mark.slow
def test_the_geometry_column_is_what_the_filter_scores(tmp_path: Path) -> None:
    """A study column equals `geomis filter`'s own scoring of the same rows with the same toxic set."""
    from geomis.features.toxic import ToxicFeatureConfig, derive_toxic_features
    from geomis.filter.scores import ScoringConfig, score_conversations
    from geomis.models.registry import load_model
    from geomis.sae.loading import load_study_saes

    config = fq.FilterQualityConfig.for_size("ci")
    model = load_model("smollm2-135m")
    name, sae = next(iter(load_study_saes("cpu-default").items()))
    references = fq.read_references(model, {name: sae}, config)
    mixed = fq.mixed_set("legal", config)
    frame = fq.score_domain(model, {name: sae}, mixed, references, config, progress=False)
    toxic, neutral = fq._reference(config)
    chosen = derive_toxic_features(model, sae, toxic, neutral, ToxicFeatureConfig(k=config.k, use_cache=False))
    assert chosen.feature_set.index_list() == references.toxic_sets[name].index_list()
    filtered = score_conversations(model, sae, chosen.feature_set, [r.as_dicts() for r in mixed.records],
                                   ScoringConfig(method="weighted", self_pairs=False, progress=False))
    np.testing.assert_allclose(frame[f"geometry {name}"], filtered.scores, rtol=1e-4, atol=1e-6)


def test_the_committed_section_re_derives_from_the_committed_scores() -> None:
    committed = json.loads(fq.RESULTS_FILE.read_text())[fq.SECTION]
    again = json.loads(json.dumps(fq.analyse(fq.SCORES_DIR, fq.FilterQualityConfig())))
    assert again == committed


def test_the_filter_defaults_state_what_the_committed_study_shows() -> None:
    """The evidence ``geomis filter`` prints in its help and report must follow from the committed results."""
    from geomis.cli.commands import build_parser
    from geomis.filter.config import DEFAULT_REFERENCE, FilterConfig
    from geomis.filter.run import FILTER_EVIDENCE
    from geomis.sae.loading import FILTER_SAES

    section = json.loads(fq.RESULTS_FILE.read_text())["filter_quality"]
    domains = section["domains"]
    for domain in ("medical", "legal", "career"):  # "well above chance ... and than a sentence-embedding baseline"
        assert domains[domain]["methods"]["geometry"]["0.5"]["precision low"] > 0.5
        assert domains[domain]["contrasts"]["geometry_minus_embedding"]["p_bh"] < 0.05
    for part in domains.values():  # "no better than an SAE-free mean-difference direction"
        assert part["contrasts"]["geometry_minus_mean-difference"]["p_bh"] >= 0.05
    code = domains["code"]["methods"]["geometry"]["0.5"]  # "insecure code not at all"
    assert code["AUROC low"] < 0.5 < code["AUROC high"]
    assert "no better than an SAE-free mean-difference direction" in FILTER_EVIDENCE
    # the defaults are the study's primary score: its SAEs, its reference, no self-pairs
    assert section["saes"] == sorted(FILTER_SAES["smollm2-135m"]) and FilterConfig().self_pairs is False
    assert tuple(fq.REFERENCE) == DEFAULT_REFERENCE and FilterConfig().score == "weighted"
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["filter"].format_help().split())
    assert "no better than an SAE-free mean-difference direction" in help_text
