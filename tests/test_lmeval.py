"""`svdzip lm-eval`: the offline MMLU task scores through lm-eval what a direct implementation
scores; the CLI runs it on a model directory."""

import json
import subprocess
import sys

import pytest
import torch

from svdzip import lmeval, models

SUBJECT = "high school geography"


def _direct_accuracy(model, tok, questions, shots) -> float:
    """MMLU as lm-eval's multiple_choice does it, written out: the summed log-probability of
    each choice's tokens (" A" .. " D") after the prompt; the best one is the answer."""
    desc = f"The following are multiple choice questions (with answers) about {SUBJECT}.\n\n"

    def text(q):
        return (f"{q['question'].strip()}\nA. {q['choices'][0]}\nB. {q['choices'][1]}\nC. {q['choices'][2]}\n"
                f"D. {q['choices'][3]}\nAnswer:")
    pool = "".join(f"{text(q)} {lmeval.LETTERS[q['answer']]}\n\n" for q in shots)
    right = 0
    for q in questions:
        context = desc + pool + text(q)
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        scores = []
        for letter in lmeval.LETTERS:
            full = tok(context + " " + letter, add_special_tokens=False)["input_ids"]
            cont = full[len(ctx):]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([full])).logits[0].double(), -1)
            scores.append(sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
        right += int(max(range(4), key=scores.__getitem__) == q["answer"])
    return right / len(questions)


@pytest.mark.parametrize("shots, n", [(0, 50), (5, 12)])
def test_offline_mmlu_through_lm_eval_equals_a_direct_implementation(shots, n):
    model, tok = models.load("smollm2-135m")
    rows = lmeval.mmlu_questions()[SUBJECT]
    got = lmeval.evaluate(model, tok, ["mmlu"], num_fewshot=shots, limit=n, subjects=[SUBJECT], batch_size=4)
    assert got["mmlu"]["n"] == n and got["mmlu"]["subjects"] == 1
    want = _direct_accuracy(model, tok, rows[lmeval.FEWSHOT_POOL:lmeval.FEWSHOT_POOL + n], rows[:shots])
    assert got["mmlu"]["acc"] == pytest.approx(want, abs=1e-12)


def test_mmlu_questions_are_all_there():
    q = lmeval.mmlu_questions()
    assert len(q) == 57 and sum(len(v) for v in q.values()) == 14042
    assert all(len(x["choices"]) == 4 and 0 <= x["answer"] < 4 for v in q.values() for x in v)
    with pytest.raises(ValueError, match="unknown MMLU subjects"):
        lmeval.mmlu_tasks(["no such subject"])


def test_cli_lm_eval(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "svdzip", "lm-eval", "smollm2-135m", "--tasks", "mmlu",
                        "--subjects", SUBJECT, "--limit", "4", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mmlu (0-shot, 1 subjects, 4 questions): acc" in r.stdout
    assert json.loads(out.read_text())["mmlu"]["n"] == 4
