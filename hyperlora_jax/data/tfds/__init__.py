"""Local TFDS builders (array_record, read without TensorFlow): ``niah``, ``d2l_qa``, ``t2l_tasks``.

    from hyperlora_jax.data import tfds as hdata
    b = hdata.Niah(config="toy", data_dir=d)                     # or Niah(config=NiahConfig(...), data_dir=d)
    src = hdata.data_source(b, "train_16_64")                   # builds offline if needed; src[i] -> dict
    src = hdata.load_built("niah/toy", d, "train_16_64")        # later, from the files alone
"""
from hyperlora_jax.data.tfds.common import DecodedSource, data_source, load_built  # noqa: F401
from hyperlora_jax.data.tfds.d2l_qa import D2LQAConfig, D2lQa  # noqa: F401
from hyperlora_jax.data.tfds.niah import Niah, NiahConfig  # noqa: F401
from hyperlora_jax.data.tfds.t2l_tasks import T2LTasksConfig, T2lTasks  # noqa: F401
