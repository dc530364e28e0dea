"""Training: one recipe (task class) per kind of model, all run by the shared accelerate loop in :mod:`.loop`.

``TASKS`` maps a config's ``recipe:`` to ``"module:Class"``; classes are imported lazily.
"""
TASKS = {
    "sr": "pixelforge.train.sr:SRTask",
    "dit": "pixelforge.train.diffscaler:DiTTask", "diffscaler": "pixelforge.train.diffscaler:DiffScalerTask",
    "dereflect": "pixelforge.train.dereflect:DereflectTask",
    "cls": "pixelforge.train.cls:ClassificationTask",
    "var_vqvae": "pixelforge.train.var:VQVAETask", "var": "pixelforge.train.var:VARTask",
}

__all__ = ["TASKS"]
