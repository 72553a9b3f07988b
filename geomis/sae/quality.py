"""How good an SAE is: reconstruction of held-out activations and the next-token loss with it spliced in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sae_lens import SAE
from tqdm.auto import tqdm

from geomis.activations import token_selection
from geomis.chat.tokens import Conversation, pad_left, tokenize_chats
from geomis.models.registry import LoadedModel
from geomis.sae.loading import LoadedSAE


@dataclass
class ReconstructionMetrics:
    """How well an SAE reconstructs a set of activations."""

    explained_variance: float
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the tokens."""
    relative_mse: float
    """sum ||x - x_hat||^2 / sum ||x||^2."""
    l0: float
    """Mean number of features firing per token."""
    dead_fraction: float
    """Fraction of features that fire on none of the tokens."""
    n_tokens: int


@torch.no_grad()
def reconstruction_metrics(sae: SAE | LoadedSAE, activations: torch.Tensor,
                           batch_size: int = 4096) -> ReconstructionMetrics:
    """Explained variance, relative MSE, L0 and never-firing features of ``sae`` on (n, d_in) activations."""
    inner = sae.sae if isinstance(sae, LoadedSAE) else sae
    data = activations.float()
    mean = data.mean(dim=0)
    error = total = norm = l0 = 0.0
    fired = torch.zeros(int(inner.cfg.d_sae), dtype=torch.bool)
    for start in range(0, data.shape[0], batch_size):
        batch = data[start:start + batch_size].to(inner.W_enc.device)
        codes = inner.encode(batch)
        recon = inner.decode(codes)
        error += (batch - recon).pow(2).sum().item()
        total += (batch - mean.to(batch.device)).pow(2).sum().item()
        norm += batch.pow(2).sum().item()
        active = codes > 0
        l0 += active.sum().item()
        fired |= active.any(dim=0).cpu()
    n = max(data.shape[0], 1)
    return ReconstructionMetrics(explained_variance=1 - error / total if total else float("nan"),
                                 relative_mse=error / norm if norm else float("nan"), l0=l0 / n,
                                 dead_fraction=1 - fired.float().mean().item(), n_tokens=int(data.shape[0]))


@dataclass
class SpliceMetrics:
    """Next-token loss with layer L's output left alone, replaced by the SAE's reconstruction, or mean-ablated."""

    ce_clean: float
    ce_spliced: float
    ce_mean_ablated: float
    n_predictions: int

    @property
    def loss_recovered(self) -> float:
        """(ablated - spliced) / (ablated - clean): 1 means the SAE loses nothing, 0 no better than the mean."""
        gap = self.ce_mean_ablated - self.ce_clean
        return (self.ce_mean_ablated - self.ce_spliced) / gap if gap else float("nan")


@torch.no_grad()
def splice_metrics(model: LoadedModel, sae: SAE | LoadedSAE, conversations: Sequence[Conversation], layer: int,
                   mean_activation: torch.Tensor, batch_size: int = 8, max_length: int = 512,
                   progress: bool = True) -> SpliceMetrics:
    """Next-token CE with the SAE's reconstruction spliced into layer ``layer`` (nnsight edit) on kept tokens.

    Only the tokens the SAE is meant for are replaced (not position 0, not special tokens); the loss is averaged
    over every next-token prediction inside the conversations.
    """
    inner = sae.sae if isinstance(sae, LoadedSAE) else sae
    chats = tokenize_chats(model.tokenizer, conversations, max_length)
    pad_id = model.tokenizer.pad_token_id
    assert isinstance(pad_id, int), "load_model sets a pad token"
    totals = {"clean": 0.0, "spliced": 0.0, "ablated": 0.0}
    count = 0
    order = sorted(range(len(chats)), key=lambda i: len(chats[i]))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for indices in tqdm(batches, desc="spliced loss", unit="batch", disable=not progress):
        batch = pad_left([chats[i] for i in indices], pad_id)
        inputs = batch.model_inputs(model.device)
        keep = token_selection(batch, assistant_only=False).to(model.device)
        targets = batch.input_ids[:, 1:].to(model.device)
        valid = (batch.attention_mask[:, 1:].bool() & batch.attention_mask[:, :-1].bool()).to(model.device)
        for mode in totals:
            with model.lm.trace(inputs):
                if mode != "clean":
                    hidden = model.lm.model.layers[layer].output
                    if mode == "spliced":
                        flat = hidden[keep]
                        replacement = inner.decode(inner.encode(flat.to(inner.W_enc.dtype))).to(hidden.dtype)
                    else:
                        replacement = mean_activation.to(hidden.device, hidden.dtype).expand(int(keep.sum()), -1)
                    edited = hidden.clone()
                    edited[keep] = replacement
                    model.lm.model.layers[layer].output = edited
                logits = model.lm.output.logits.save()
            losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                                       reduction="none")
            totals[mode] += losses[valid].sum().item()
        count += int(valid.sum())
    return SpliceMetrics(ce_clean=totals["clean"] / count, ce_spliced=totals["spliced"] / count,
                         ce_mean_ablated=totals["ablated"] / count, n_predictions=count)
