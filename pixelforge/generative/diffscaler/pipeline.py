"""Sampling a (DiffScaler-adapted) DiT with any diffusers scheduler: a ``DiffusionPipeline`` and a one-call helper.

Classifier-free guidance takes each sample's null class from the transformer's config (the base model's
``num_classes``, or its task's class count), never a hard-coded index; guidance applies to the first ``in_channels``
output channels (ε), the learned-σ channels pass through unguided. One ``torch.Generator`` feeds both the initial
noise and every scheduler step, so a run is reproducible bit for bit, also after a save/reload.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from .dit import DiT

__all__ = ["DiffScalerPipeline", "make_scheduler", "SCHEDULERS", "load_pipeline", "generate_images"]

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}


def make_scheduler(name: str, config: dict | None = None):
    """A diffusers scheduler by short name (``ddpm``, ``ddim``, ``dpm++`` = DPM-Solver++ order 2), built from a
    training schedule config (default: DiT's linear betas, 1000 steps, ε-prediction)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{name}'; choose one of: {', '.join(SCHEDULERS)}")
    config = dict(config or {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4,
                             "beta_end": 0.02, "prediction_type": "epsilon"})
    if name == "dpm++":
        config.update(algorithm_type="dpmsolver++", solver_order=2)
    return SCHEDULERS[name].from_config(config)


class DiffScalerPipeline(DiffusionPipeline):
    """Class-conditional / unconditional sampling of a :class:`DiT`, per-sample task routing, optional VAE.

    Components: ``transformer`` (:class:`DiT`), ``scheduler`` (any diffusers scheduler), ``vae`` (an
    ``AutoencoderKL`` for latent models, or None for pixel-space models).
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]

    def __init__(self, transformer: DiT, scheduler, vae=None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)

    @torch.no_grad()
    def __call__(self, class_labels: list[int] | torch.Tensor | None = None, task: int | str | list | None = None,
                 batch_size: int | None = None, guidance_scale: float = 1.0, num_inference_steps: int = 50,
                 generator: torch.Generator | None = None, eta: float = 0.0, output_type: str = "pil",
                 return_dict: bool = True):
        """Generate images.

        Args:
            class_labels: (B,) classes within each sample's task (None: unconditional = the null class).
            task: one task (id or name) for all samples, or one per sample; None or -1 = the base model.
            batch_size: number of images when neither class_labels nor a task list gives it (default 1).
            guidance_scale: CFG weight w (ε = ε_null + w·(ε_c − ε_null)); off at 1 and for unconditional samples.
            num_inference_steps: scheduler steps. generator: seeds the noise and the scheduler's own draws.
            eta: DDIM's η (ignored by schedulers without it). output_type: "pil", "np" or "pt" (B, 3, H, W) in [0, 1].
        Returns:
            ``ImagePipelineOutput(images=...)`` or a 1-tuple.
        """
        model, device = self.transformer, self._execution_device
        cfg = model.config
        n = len(class_labels) if class_labels is not None else (
            len(task) if isinstance(task, (list, tuple)) else (batch_size or 1))
        tasks = task if isinstance(task, (list, tuple)) else [task] * n
        if len(tasks) != n:
            raise ValueError(f"{len(tasks)} tasks for {n} samples")
        task_ids = torch.tensor([-1 if t is None else model.task_index(t) for t in tasks], device=device)
        nulls = [model.null_class_index(int(t)) for t in task_ids]
        if class_labels is None:
            if any(v is None for v in nulls):
                raise ValueError("class_labels are required: this model has no null class")
            labels = torch.tensor(nulls, device=device)
        else:
            labels = torch.as_tensor(class_labels, device=device).long().reshape(-1)
        guided = guidance_scale != 1.0 and class_labels is not None
        if guided and any(v is None for v in nulls):
            raise ValueError("classifier-free guidance needs a null class; this model has none (guidance_scale=1)")
        use_tasks = any(model.config.tasks or [])
        if not use_tasks and (task_ids >= 0).any():
            raise ValueError("this model has no tasks")
        if guided:
            labels = torch.cat([labels, torch.tensor(nulls, device=device)])
            task_ids = torch.cat([task_ids, task_ids])

        latents = randn_tensor((n, cfg.in_channels, cfg.sample_size, cfg.sample_size), generator=generator,
                               device=device, dtype=model.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_params = set(inspect.signature(self.scheduler.step).parameters)
        step_kwargs = {k: v for k, v in (("generator", generator), ("eta", eta)) if k in step_params}
        learned_var = getattr(self.scheduler.config, "variance_type", None) in ("learned", "learned_range")
        for t in self.progress_bar(self.scheduler.timesteps):
            x_in = self.scheduler.scale_model_input(latents, t)
            x_in = torch.cat([x_in, x_in]) if guided else x_in
            out = model(x_in, t, labels, task_ids=task_ids if use_tasks else None).sample
            eps, rest = out[:, :cfg.in_channels], out[:, cfg.in_channels:]
            if guided:
                cond, uncond = eps.chunk(2)
                eps, rest = uncond + guidance_scale * (cond - uncond), rest[:n]
            model_output = torch.cat([eps, rest], dim=1) if (learned_var and rest.shape[1]) else eps
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample

        if self.vae is not None:
            latents = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        images = (latents.float() / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            images = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def load_pipeline(model_name_or_path: str | os.PathLike, weights: str | list | None = None,
                  scheduler: str | None = None, device: str | torch.device = "cpu") -> DiffScalerPipeline:
    """A pipeline from a saved pipeline folder (``model_index.json``), a :class:`DiT` folder (``config.json``), a
    diffusers ``DiTTransformer2DModel`` folder, or a registered model name (``dit_tiny_4``...) — all offline.

    ``weights``: for a model name, its weights file; then (or for folders) any number of DiffScaler task files
    (safetensors written by :meth:`DiT.save_task`), added as tasks in order. ``scheduler``: replace the saved
    scheduler by ``ddpm``/``ddim``/``dpm++`` built from its config.
    """
    files = [] if weights is None else ([weights] if isinstance(weights, (str, os.PathLike)) else list(weights))
    task_files = [f for f in files if _is_task_file(f)]
    base_files = [f for f in files if f not in task_files]
    path = Path(model_name_or_path)
    if path.is_dir() and (path / "model_index.json").is_file():
        pipe = DiffScalerPipeline.from_pretrained(str(path), local_files_only=True)
    else:
        if path.is_dir() and (path / "config.json").is_file():
            import json

            cls_name = json.loads((path / "config.json").read_text()).get("_class_name")
            model = (DiT.from_pretrained(str(path), local_files_only=True) if cls_name == DiT.__name__
                     else DiT.from_diffusers(path))
        elif path.exists():
            raise FileNotFoundError(f"{path} is neither a pipeline folder (model_index.json) nor a model folder "
                                    f"(config.json)")
        else:
            from ...zoo import create_model

            if len(base_files) > 1:
                raise ValueError(f"one base weights file expected, got {base_files}")
            weights_file = base_files[0] if base_files else None
            model = create_model(str(model_name_or_path), weights=weights_file,
                                 **_training_model_args(weights_file, str(model_name_or_path)))
            base_files = []
        pipe = DiffScalerPipeline(model, make_scheduler(scheduler or "ddim"))
    if base_files:
        raise ValueError(f"base weights {base_files} given for {path}, which holds its own weights")
    for f in task_files:
        pipe.transformer.load_task(f)
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, dict(pipe.scheduler.config))
    pipe.transformer.eval()
    return pipe.to(device)


def _training_model_args(weights, name: str) -> dict:
    """``model.args`` of the training config that ``pixelforge train`` stores in a weights file, when it trained
    the model ``name`` ({} otherwise)."""
    from ...zoo import stored_training_config

    model = stored_training_config(weights).get("model", {})
    return dict(model.get("args", {})) if model.get("name") == name else {}


def _is_task_file(path) -> bool:
    if not str(path).endswith(".safetensors"):
        return False
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return "pixelforge.diffscaler_task" in (f.metadata() or {})


def generate_images(model_name_or_path: str | os.PathLike, weights: str | list | None = None,
                    classes: list[int] | None = None, n: int | None = None, task: int | str | list | None = None,
                    scheduler: str = "ddim", steps: int = 50, guidance: float = 1.0, seed: int = 0,
                    device: str | torch.device = "cpu") -> list:
    """Generate ``n`` images as a list of PIL images (the entry point of ``pixelforge generate`` for DiT models).

    Args:
        model_name_or_path, weights: see :func:`load_pipeline`.
        classes: class per image; one class is repeated n times; None: classes 0, 1, ... cycled for a
            class-conditional model (of the task), unconditional otherwise.
        n: number of images (default: len(classes), or 1).
        task: task id or name for every image, or one per image; None: the base model.
        scheduler: ``ddpm``, ``ddim`` or ``dpm++``. steps: sampling steps. guidance: CFG weight (1 = off).
        seed: seeds one torch.Generator for noise and scheduler.
    """
    pipe = load_pipeline(model_name_or_path, weights, scheduler, device)
    pipe.set_progress_bar_config(disable=True)
    if isinstance(task, str) and task.lstrip("-").isdigit():  # the command line passes ids as text
        task = int(task)
    n = n or (len(classes) if classes else (len(task) if isinstance(task, (list, tuple)) else 1))
    if classes is not None and len(classes) == 1:
        classes = list(classes) * n
    if classes is not None and len(classes) != n:
        raise ValueError(f"{len(classes)} classes for {n} images")
    model = pipe.transformer
    first = task[0] if isinstance(task, (list, tuple)) else task
    num_classes = model.num_classes_of(-1 if first is None else model.task_index(first))
    if classes is None and num_classes:
        classes = [i % num_classes for i in range(n)]
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    return pipe(class_labels=classes, task=task, batch_size=n, guidance_scale=guidance, num_inference_steps=steps,
                generator=generator, output_type="pil").images
