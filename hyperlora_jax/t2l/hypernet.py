"""The Text-to-LoRA hypernetwork (variants L, M, S) as a pure-functional ``flax.linen`` module.

Notation: D = ``latent_size``, H = ``head_in_size``, E = ``task_emb_size``, r = rank, L = ``n_layers``,
M = number of target modules, N = number of task descriptions; ``in``/``out`` = a target module's features.

Forward pass (dropout p = ``dropout_rate`` where marked ``drop``; identity when ``deterministic``):

    t     = LN(Linear_{E->D/2}(task_emb))                           task encoder          t: [N, D/2]
    x     = concat(t, LN(E_depth[l]), LN(E_type[m]))                  for every (m, l, n)   x: [M, L, N, D]
    x     = drop(silu(Lin(drop(silu(Lin(drop(x)))))))                  mixer (no residual)
    h     = x + drop(silu(Lin(drop(silu(Lin(LN(x)))))))               mlp1 (residual)
    mlp2  = same structure as mlp1, separate weights
    mlp3  = silu(Lin_{4D->H}(drop(silu(Lin_{D->4D}(LN(.))))))          no residual, no trailing dropout
    L:  y = head_m(mlp3(mlp2(h)))                                     [r*(in+out)]
        A = y[:r*in].reshape(r, in);  B = y[r*in:].reshape(r, out)
    M:  y_P = head_m(mlp3(mlp2(h + LN_out(e_{m,P})))).reshape(r, max(in,out))   for P in (A, B)
        A = y_A[:, :in];  B = y_B[:, :out]
    S:  pos = mlp2(LN_pos(E_pos[0..r-1]))                             [r, D]
        y_P = head_m(mlp3(mlp2(h + LN_out(e_{m,P}))[None] + pos))     [r, max(in,out)]
        A = y_A[:, :in];  B = y_B[:, :out]

The head emits the B block as ``[r, out]`` row-major; that is exactly the project's ``Adapter`` B layout
``[R, d_out]`` (PEFT's ``lora_B.weight`` [out, r] is its transpose). Every (module, layer, task) triple is computed in
one batched pass: the trunk runs on ``[M, L, N, D]`` (M/S: ``[M, 2, L, N, D]``, S: ``[M, 2, L, N, r, D]``) and only the
per-module heads are applied module by module (their shapes differ).

Initialisation follows the reference: Linear weight and bias U(+-1/sqrt(fan_in)), Embedding N(0, 1), LayerNorm
(1, 0), ``out_emb`` vectors N(0, 1); heads have zero weights and a "bias-HyperInit" bias built from one
A0 ~ U(+-1/sqrt(in)) [r, in] per module (PEFT's ``lora_A`` init):
    L: bias = concat(A0.flatten(), zeros(r*out))   -> every layer and task starts from A = A0, B = 0, delta W = 0
    M: bias.reshape(r, max(in,out))[:, :in] = A0 / sqrt(2)   (= A0.flatten()/sqrt(2) when in >= out, as the reference)
    S: bias = A0.flatten()[:max(in,out)] / sqrt(2 r)
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hyperlora_jax.lora import LORA_MODULES, Adapter
from hyperlora_jax.sharding import adapter_axes, constrain

VARIANTS = ("L", "M", "S")
SCALES = ("rslora", "alpha_over_r")
LN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class T2LConfig:
    """Static configuration of a T2L hypernetwork (hashable: usable as a ``jax.jit`` static argument).

    target_modules: module-type order, i.e. module ``target_modules[i]`` uses row i of the type embedding. For an
        imported checkpoint this is the run's training order (``adapter_config.json``), not a sorted order.
    in_features / out_features: per target module, in the order of ``target_modules``.
    """

    variant: str = "L"
    latent_size: int = 512
    head_in_size: int = 2048
    task_emb_size: int = 1024
    r: int = 8
    lora_alpha: float = 16.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    in_features: tuple[int, ...] = (4096, 4096)
    out_features: tuple[int, ...] = (4096, 1024)
    n_layers: int = 32
    dropout_rate: float = 0.05

    def __post_init__(self):
        for f in ("target_modules", "in_features", "out_features"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        object.__setattr__(self, "lora_alpha", float(self.lora_alpha))
        problems = []
        if self.variant not in VARIANTS:
            problems.append(f"variant {self.variant!r} is not one of {VARIANTS}")
        if self.latent_size <= 0 or self.latent_size % 4:
            problems.append(f"latent_size {self.latent_size} must be a positive multiple of 4")
        if not self.target_modules or len(set(self.target_modules)) != len(self.target_modules):
            problems.append(f"target_modules {self.target_modules} must be non-empty and unique")
        bad = [m for m in self.target_modules if m not in LORA_MODULES]
        if bad:
            problems.append(f"target modules {bad} are not LoRA modules of this project ({LORA_MODULES})")
        if not (len(self.in_features) == len(self.out_features) == len(self.target_modules)):
            problems.append("in_features / out_features need one entry per target module")
        for v, name in ((self.head_in_size, "head_in_size"), (self.task_emb_size, "task_emb_size"), (self.r, "r"),
                        (self.n_layers, "n_layers")):
            if int(v) <= 0:
                problems.append(f"{name} must be positive, got {v}")
        if problems:
            raise ValueError("invalid T2LConfig: " + "; ".join(problems))

    @property
    def features(self) -> dict[str, tuple[int, int]]:
        """{module: (in_features, out_features)}."""
        return {m: (i, o) for m, i, o in zip(self.target_modules, self.in_features, self.out_features)}

    def head_out_size(self, module: str) -> int:
        """Output size of ``head_module``: L r*(in+out), M r*max(in,out), S max(in,out)."""
        i, o = self.features[module]
        return {"L": self.r * (i + o), "M": self.r * max(i, o), "S": max(i, o)}[self.variant]

    def scale(self, kind: str = "rslora") -> float:
        """LoRA scale: 'rslora' alpha/sqrt(r) (as trained, PEFT) or 'alpha_over_r' alpha/r (vLLM 0.5.4 evaluations)."""
        if kind == "rslora":
            return self.lora_alpha / math.sqrt(self.r)
        if kind == "alpha_over_r":
            return self.lora_alpha / self.r
        raise ValueError(f"unknown LoRA scale {kind!r}; expected one of {SCALES}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "T2LConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown T2LConfig fields: {sorted(unknown)}")
        return cls(**dict(d))


# ------------------------------------------------------------------------------------------------ initialisers
def _host_draw(kind: str, shape: tuple, bound: float):
    def draw(key_data):
        gen = np.random.default_rng(np.asarray(key_data, np.uint32).ravel().tolist())
        if kind == "uniform":
            return gen.uniform(-bound, bound, size=shape).astype(np.float32)
        return gen.standard_normal(size=shape).astype(np.float32)
    return draw


def _draw(key, kind: str, shape, bound: float = 1.0):
    """U(-bound, bound) ('uniform') or N(0, 1) ('normal') float32 draws, made on the host from the key's bits.

    A deterministic function of the key, identical under ``jit`` and eagerly. Host draws through ``pure_callback``
    avoid compiling one XLA random kernel per parameter (tens of seconds on CPU for this model).
    """
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    shape = tuple(int(d) for d in shape)
    return jax.pure_callback(_host_draw(kind, shape, float(bound)), jax.ShapeDtypeStruct(shape, jnp.float32), data)


def _uniform(bound: float):
    """Torch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    def init(key, shape, dtype=jnp.float32):
        return _draw(key, "uniform", shape, bound).astype(dtype)
    return init


def _normal(key, shape, dtype=jnp.float32):
    """Torch's default Embedding init (and ``out_emb``): N(0, 1)."""
    return _draw(key, "normal", shape).astype(dtype)


def _hyperinit_bias(variant: str, r: int, d_in: int, d_out: int):
    """Head bias init ('bias-HyperInit' from one PEFT-like A0 ~ U(+-1/sqrt(in)) of shape [r, in])."""
    def init(key, shape, dtype=jnp.float32):
        a0 = _draw(key, "uniform", (r, d_in), 1.0 / math.sqrt(d_in))
        width = max(d_in, d_out)
        if variant == "L":     # [A0.flatten(), zeros(r*out)]
            bias = jnp.concatenate([a0.reshape(-1), jnp.zeros((r * d_out,), jnp.float32)])
        elif variant == "M":   # rows of [r, max(in,out)] start with A0/sqrt(2)
            bias = jnp.zeros((r, width), jnp.float32).at[:, :d_in].set(a0 / math.sqrt(2.0)).reshape(-1)
        else:                  # S: A0.flatten()[:max(in,out)] / sqrt(2r)
            flat = a0.reshape(-1)[:width] / math.sqrt(2.0 * r)
            bias = jnp.zeros((width,), jnp.float32).at[: flat.shape[0]].set(flat)
        assert bias.shape == tuple(shape), (bias.shape, shape)
        return bias.astype(dtype)
    return init


# ------------------------------------------------------------------------------------------------ layers
class Linear(nn.Module):
    """``y = x @ kernel + bias``; kernel [in, out] (= torch ``weight.T``). Torch default init unless overridden."""

    features: int
    kernel_init: Any = None
    bias_init: Any = None

    @nn.compact
    def __call__(self, x):
        d_in = x.shape[-1]
        bound = 1.0 / math.sqrt(d_in)
        kernel = self.param("kernel", self.kernel_init or _uniform(bound), (d_in, self.features), jnp.float32)
        bias = self.param("bias", self.bias_init or _uniform(bound), (self.features,), jnp.float32)
        y = jnp.matmul(x, kernel.astype(x.dtype), precision=jax.lax.Precision.HIGHEST)
        return y + bias.astype(x.dtype)


def _layer_norm(name=None):
    return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, name=name)


class MLPBlock(nn.Module):
    """``[LN] -> Linear(4D) -> SiLU -> drop -> Linear(out) -> SiLU [-> drop]`` with optional input dropout/residual.

    mixer: in_dropout, out_dropout, no norm, no residual. mlp1/mlp2: norm, out_dropout, residual.
    mlp3: norm only (output size H).
    """

    hidden: int
    out: int
    rate: float
    pre_norm: bool = True
    in_dropout: bool = False
    out_dropout: bool = False
    residual: bool = False

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        y = x
        if self.in_dropout:
            y = nn.Dropout(self.rate)(y, deterministic=deterministic)
        if self.pre_norm:
            y = _layer_norm("norm")(y)
        y = nn.silu(Linear(self.hidden, name="fc1")(y))
        y = nn.Dropout(self.rate)(y, deterministic=deterministic)
        y = nn.silu(Linear(self.out, name="fc2")(y))
        if self.out_dropout:
            y = nn.Dropout(self.rate)(y, deterministic=deterministic)
        return x + y if self.residual else y


class TaskEncoder(nn.Module):
    """``LN(Linear_{E->D/2}(e))``: task_emb [..., E] -> encoded [..., D/2]. No activation."""

    features: int

    @nn.compact
    def __call__(self, task_emb):
        return _layer_norm("norm")(Linear(self.features, name="linear")(task_emb))


class OutEmbeddings(nn.Module):
    """M/S: one learned pair (A, B) of [D] vectors per module, N(0, 1) init. Returns [M, 2, D] (module order)."""

    modules: tuple[str, ...]
    dim: int

    @nn.compact
    def __call__(self):
        return jnp.stack([_OutPair(self.dim, name=m)() for m in self.modules])


class _OutPair(nn.Module):
    dim: int

    @nn.compact
    def __call__(self):
        return jnp.stack([self.param(p, _normal, (self.dim,), jnp.float32) for p in ("A", "B")])


class Heads(nn.Module):
    """One ``Linear(H -> head_out_size(m))`` per target module; zero weights and HyperInit bias at init."""

    cfg: "T2LConfig"

    @nn.compact
    def __call__(self, module: str, z):
        d_in, d_out = self.cfg.features[module]
        head = Linear(self.cfg.head_out_size(module), kernel_init=nn.initializers.zeros,
                      bias_init=_hyperinit_bias(self.cfg.variant, self.cfg.r, d_in, d_out), name=module)
        return head(z)


class T2LHypernet(nn.Module):
    """The hypernetwork. ``encode_task``: [N, E] -> [N, D/2]; ``__call__``: encoded [N, D/2] -> (A, B) dicts.

    A[m]: [L, N, r, in_m] (PEFT lora_A rows), B[m]: [L, N, r, out_m] (the head's B block, = PEFT lora_B transposed),
    both unscaled.
    """

    cfg: T2LConfig

    def setup(self):
        c = self.cfg
        d = c.latent_size
        emb_init = _normal
        self.task_encoder = TaskEncoder(d // 2)
        self.depth_emb = nn.Embed(c.n_layers, d // 4, embedding_init=emb_init)
        self.depth_norm = _layer_norm()
        self.type_emb = nn.Embed(len(c.target_modules), d // 4, embedding_init=emb_init)
        self.type_norm = _layer_norm()
        rate = c.dropout_rate
        self.mixer = MLPBlock(4 * d, d, rate, pre_norm=False, in_dropout=True, out_dropout=True)
        self.mlp1 = MLPBlock(4 * d, d, rate, out_dropout=True, residual=True)
        self.mlp2 = MLPBlock(4 * d, d, rate, out_dropout=True, residual=True)
        self.mlp3 = MLPBlock(4 * d, c.head_in_size, rate)
        self.heads = Heads(c)
        if c.variant in ("M", "S"):
            self.out_emb = OutEmbeddings(c.target_modules, d)
            self.out_emb_norm = _layer_norm()
        if c.variant == "S":
            self.pos_emb = nn.Embed(c.r, d, embedding_init=emb_init)
            self.pos_norm = _layer_norm()

    def encode_task(self, task_emb):
        """task_emb [N, E] -> encoded_task_emb [N, D/2]."""
        return self.task_encoder(task_emb)

    def __call__(self, encoded_task_emb, deterministic: bool = True):
        c = self.cfg
        n_mod, n_layers, n = len(c.target_modules), c.n_layers, encoded_task_emb.shape[0]
        d = c.latent_size
        depth = self.depth_norm(self.depth_emb(jnp.arange(n_layers)))                    # [L, D/4]
        types = self.type_norm(self.type_emb(jnp.arange(n_mod)))                         # [M, D/4]
        x = jnp.concatenate([
            jnp.broadcast_to(encoded_task_emb[None, None], (n_mod, n_layers, n, d // 2)),
            jnp.broadcast_to(depth[None, :, None], (n_mod, n_layers, n, d // 4)),
            jnp.broadcast_to(types[:, None, None], (n_mod, n_layers, n, d // 4)),
        ], axis=-1)                                                                         # [M, L, N, D]
        h = self.mlp1(self.mixer(x, deterministic), deterministic)
        r = c.r
        A, B = {}, {}
        if c.variant == "L":
            z = self.mlp3(self.mlp2(h, deterministic), deterministic)                      # [M, L, N, H]
            for i, m in enumerate(c.target_modules):
                d_in, d_out = c.features[m]
                y = self.heads(m, z[i])                                                     # [L, N, r(in+out)]
                A[m] = y[..., : r * d_in].reshape(n_layers, n, r, d_in)
                B[m] = y[..., r * d_in:].reshape(n_layers, n, r, d_out)
            return A, B
        e = self.out_emb_norm(self.out_emb())                                              # [M, 2, D]
        u = self.mlp2(h[:, None] + e[:, :, None, None, :], deterministic)                  # [M, 2, L, N, D]
        if c.variant == "S":
            pos = self.mlp2(self.pos_norm(self.pos_emb(jnp.arange(r))), deterministic)    # [r, D]
            u = u[..., None, :] + pos                                                       # [M, 2, L, N, r, D]
        z = self.mlp3(u, deterministic)
        for i, m in enumerate(c.target_modules):
            d_in, d_out = c.features[m]
            y = self.heads(m, z[i])
            y = y.reshape(2, n_layers, n, r, max(d_in, d_out))                             # M: [.., r*max] -> rows
            A[m], B[m] = y[0, ..., :d_in], y[1, ..., :d_out]
        return A, B

    def generate(self, task_emb, deterministic: bool = True):
        """task_emb [N, E] -> (A, B) as ``__call__``."""
        return self(self.encode_task(task_emb), deterministic)


# ------------------------------------------------------------------------------------------------ functional API
def _params(params):
    """Accepts either the 'params' collection or a full variables dict {'params': ...}."""
    if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
        return params["params"]
    return params


@functools.partial(jax.jit, static_argnames=("cfg",))
def init_params(cfg: T2LConfig, rng: jax.Array) -> dict:
    """Fresh parameters (the 'params' collection) with the reference's initialisation (see module docstring)."""
    dummy = jnp.zeros((1, cfg.task_emb_size), jnp.float32)
    return T2LHypernet(cfg).init(rng, dummy, method=T2LHypernet.generate)["params"]


def param_shapes(cfg: T2LConfig) -> dict:
    """The parameter tree of ``cfg`` as ``jax.ShapeDtypeStruct`` leaves (no computation)."""
    model = T2LHypernet(cfg)
    dummy = jax.ShapeDtypeStruct((1, cfg.task_emb_size), jnp.float32)
    return jax.eval_shape(functools.partial(model.init, method=T2LHypernet.generate),
                          jax.random.key(0), dummy)["params"]


def _rngs(deterministic, rng):
    if deterministic:
        return {}
    if rng is None:
        raise ValueError("dropout is on (deterministic=False): pass rng")
    return {"dropout": rng}


@functools.partial(jax.jit, static_argnames=("cfg",))
def encode_task(params, cfg: T2LConfig, task_emb: jax.Array) -> jax.Array:
    """task_emb [N, E] -> encoded_task_emb [N, D/2] = LN(Linear(task_emb))."""
    return T2LHypernet(cfg).apply({"params": _params(params)}, task_emb, method=T2LHypernet.encode_task)


def _adapter(cfg, A, B, n, scale):
    return Adapter(A=A, B=B, scale=jnp.full((n,), cfg.scale(scale), jnp.float32))


@functools.partial(jax.jit, static_argnames=("cfg", "deterministic", "encoded"))
def _generate(params, cfg: T2LConfig, x, deterministic: bool, rng, encoded: bool):
    model = T2LHypernet(cfg)
    method = T2LHypernet.__call__ if encoded else T2LHypernet.generate
    A, B = model.apply({"params": _params(params)}, x, deterministic, method=method, rngs=_rngs(deterministic, rng))
    axes = adapter_axes(A)  # under an active mesh: the adapter's logical axes (sharding.py); else a no-op
    return constrain(A, axes.A), constrain(B, axes.B)


def generate_adapters(params, cfg: T2LConfig, task_emb: jax.Array, scale: str = "rslora", *,
                      deterministic: bool = True, rng: jax.Array | None = None) -> Adapter:
    """All descriptions x all layers x all target modules in one jit-compiled call.

    params:   the hypernetwork's 'params' collection (or {'params': ...}).
    task_emb: [N, E] task-description embeddings (gte: L2-normalised, times sqrt(E)).
    scale:    'rslora' -> alpha/sqrt(r) (training, PEFT) or 'alpha_over_r' -> alpha/r (vLLM 0.5.4 evaluations).
    deterministic / rng: dropout off (default) or on with the given PRNG key.

    Returns ``Adapter`` with A[m]: [L, N, r, in_m], B[m]: [L, N, r, out_m] (B = PEFT lora_B.weight transposed),
    scale: [N] float32. The A/B computation is one compiled function per (cfg, deterministic, input shape); the
    scale choice does not recompile it.
    """
    cfg.scale(scale)  # validates the name before any work
    A, B = _generate(params, cfg, task_emb, deterministic, rng, encoded=False)
    return _adapter(cfg, A, B, task_emb.shape[0], scale)


def generate_adapters_from_encoded(params, cfg: T2LConfig, encoded_task_emb: jax.Array, scale: str = "rslora", *,
                                   deterministic: bool = True, rng: jax.Array | None = None) -> Adapter:
    """As :func:`generate_adapters`, from the task encoder's output encoded_task_emb [N, D/2]."""
    cfg.scale(scale)
    A, B = _generate(params, cfg, encoded_task_emb, deterministic, rng, encoded=True)
    return _adapter(cfg, A, B, encoded_task_emb.shape[0], scale)


def count_params(params) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))
