"""FSDP2 for the train stage under torchrun (`train.fsdp`): parameters, gradients and optimizer
state sharded over the processes, so each holds 1/P of them instead of a full copy.

Only called inside an initialised process group (spark_core/model/train_worker.py). Three things keep
the update equal to the one-process one (tested within float rounding):
- gradients are *summed* over the processes, not averaged (`set_gradient_divide_factor(1)`):
  each process's micro-batches are already weighted by the whole mini-batch's tokens;
- every process runs the same number of forward/backward passes (FSDP's all-gathers and
  reduce-scatters are collectives): the trainer gives a process with one micro-batch fewer a
  zero-weight repeat (spark_core/model/trainer.py);
- checkpoints stay in the one-process format: the full weights are gathered to rank 0 and saved
  with `save_pretrained`, the optimizer state is gathered and written with parameter indices as
  `torch.optim` does, so a run may switch `train.fsdp` or `train.processes` between stages.
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one (`model.model.layers` for Hugging Face causal LMs)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ValueError(f"train.fsdp: {type(model).__name__} has no model.layers to shard")
    return list(layers)


def shard(model: nn.Module, device: torch.device, frozen: bool = False) -> nn.Module:
    """Shard `model` in place over the process group: each decoder layer its own FSDP unit (its
    parameters gathered only while it runs), the rest (embeddings, final norm, LM head) the root's.
    `frozen` (the reference): the root reshards after its forward too, since no backward will."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh, **({"reshard_after_forward": True} if frozen else {}))
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # a sum: the micro-batches carry the mini-batch's token weights
            m.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local_numel(p: torch.Tensor) -> int:
    """Elements this process holds of `p` (its shard under FSDP, all of it otherwise)."""
    return p.to_local().numel() if hasattr(p, "to_local") else p.numel()


def full_model_state(model: nn.Module) -> dict:
    """The full state dict on rank 0's CPU (empty elsewhere). A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _names(model: nn.Module) -> list[str]:
    """Parameter names in `model.parameters()` order: the indices torch.optim's state dict uses."""
    return [n for n, _ in model.named_parameters()]


def full_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer's full state on rank 0's CPU in torch.optim's own format (parameters by
    index), empty elsewhere. A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if not opt.state:  # no step taken yet: torch's helper would take a zero step to make some
        return opt.state_dict()
    by_name = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not by_name:
        return {}
    index = {n: i for i, n in enumerate(_names(model))}
    return {"state": {index[n]: v for n, v in by_name["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]}


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load a torch.optim-format full state (as `full_optimizer_state` writes, or a one-process
    run) into the sharded optimizer; every rank passes the same full state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if not state["state"]:  # saved before any step: nothing to load (as torch.optim would do)
        return
    names = _names(model)
    by_name = {"state": {names[i]: v for i, v in state["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, by_name, options=StateDictOptions(full_state_dict=True))
