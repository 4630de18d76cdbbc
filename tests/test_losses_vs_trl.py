"""DPO and LD-DPO values checked against TRL's DPOTrainer on the same model, reference and batch.

TRL computes its log-probs with its own fused LM head and its own LD-DPO masking; syncrl's side
uses a plain Hugging Face forward, ``token_logprobs_and_entropy`` and the pure loss functions.
"""

from __future__ import annotations

import copy

import pytest
import torch

from learner.logprobs import token_logprobs_and_entropy
from learner.losses import dpo_loss, ld_sequence_logps

trl = pytest.importorskip("trl")


def _trl_trainer(model_dir, tmp_path, beta, ld_alpha):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = copy.deepcopy(model)
    torch.manual_seed(0)
    with torch.no_grad():  # a reference that differs from the policy, so the ratios matter
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    data = Dataset.from_dict(
        {
            "prompt": ["What is 2 + 3?", "Sum of 4 and 5", "7 minus 2", "How many apples?"],
            "chosen": [" 5", " The answer is 9 apples", " 5 \\boxed{5}", " 12 12 12 12 12 12 12"],
            "rejected": [" 6 6 6 6 6", " 8", " The result 4", " 3"],
        }
    )
    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        beta=beta,
        ld_alpha=ld_alpha,
        use_cpu=True,
        bf16=False,
        report_to=[],
        max_length=128,
        loss_type=["sigmoid"],
    )
    return trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok)


@pytest.mark.parametrize("ld_alpha", [None, 0.3, 0.0])
def test_dpo_and_ld_dpo_match_trl(tiny_llama, tmp_path, ld_alpha):
    beta = 0.5
    trainer = _trl_trainer(tiny_llama, tmp_path, beta, ld_alpha)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()  # no dropout in either computation
    with torch.no_grad():
        expected = trainer._compute_loss(trainer.model, batch, return_outputs=False)

        ids, attn = batch["input_ids"], batch["attention_mask"]
        mask = batch["completion_mask"].float()
        logps, _ = token_logprobs_and_entropy(trainer.model(input_ids=ids, attention_mask=attn).logits, ids)
        ref_logps, _ = token_logprobs_and_entropy(trainer.ref_model(input_ids=ids, attention_mask=attn).logits, ids)
    half = ids.shape[0] // 2  # TRL's batch is [chosen rows; rejected rows]
    alpha = 1.0 if ld_alpha is None else ld_alpha
    c, r = ld_sequence_logps(logps[:half], mask[:half], logps[half:], mask[half:], alpha)
    rc, rr = ld_sequence_logps(ref_logps[:half], mask[:half], ref_logps[half:], mask[half:], alpha)
    ours = dpo_loss(c, r, rc, rr, beta).mean()

    assert mask[:half].sum(-1).ne(mask[half:].sum(-1)).all(), "every pair must differ in length"
    torch.testing.assert_close(ours, expected.float(), rtol=1e-5, atol=1e-6)
    assert abs(ours.item() - torch.log(torch.tensor(2.0)).item()) > 1e-4, "reference equal to policy: weak check"
    if ld_alpha is not None:  # the length weighting changes the value: the check is sensitive to it
        plain = dpo_loss(
            *ld_sequence_logps(logps[:half], mask[:half], logps[half:], mask[half:], 1.0),
            *ld_sequence_logps(ref_logps[:half], mask[:half], ref_logps[half:], mask[half:], 1.0),
            beta,
        )
        assert abs(plain.mean().item() - ours.item()) > 1e-4
