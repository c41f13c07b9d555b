"""The public API of ../shared/design.md: `from lladax import convert, model, sampling, diffusion,
likelihood` gives the documented entry points with the documented signatures, and each face is the
wing's own function (no copies to drift apart)."""

import inspect

import pytest

import lladax.diffusion.likelihood
import lladax.diffusion.losses
import lladax.diffusion.sampling
import lladax.model.transformer
import lladax.store.convert
from lladax import convert, diffusion, likelihood, model, sampling

FACES = [
    (convert, lladax.store.convert, ["load_hf", "save_hf"]),
    (model, lladax.model.transformer, ["forward", "init_params", "abstract_params"]),
    (sampling, lladax.diffusion.sampling, ["generate", "generate_with"]),
    (diffusion, lladax.diffusion.losses, ["mask_tokens", "pretrain_loss", "sft_loss"]),
    (likelihood, lladax.diffusion.likelihood, ["batch_elbo", "log_likelihood"]),
]


@pytest.mark.parametrize("face, home, names", FACES, ids=lambda x: getattr(x, "__name__", ""))
def test_faces_export_the_wings_own_functions(face, home, names):
    for name in names:
        assert getattr(face, name) is getattr(home, name), name
        assert name in face.__all__


def _params(fn):
    return {
        name: (p.kind, p.default)
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is not p.VAR_KEYWORD
    }


def test_generate_signature_is_the_documented_one():
    params = _params(sampling.generate)
    assert list(params)[:4] == ["params", "cfg", "prompt", "attention_mask"]
    assert params["attention_mask"][1] is None
    kw = inspect.Parameter.KEYWORD_ONLY
    for name in ("steps", "gen_length", "block_length"):
        assert params[name][0] is kw, name
    documented = dict(
        temperature=0.0,
        cfg_scale=0.0,
        remasking="low_confidence",
        logits_eos_inf=False,
        confidence_eos_eot_inf=False,
        rng=None,
        return_history=False,
    )
    for name, default in documented.items():
        assert params[name] == (kw, default), name


def test_loss_and_likelihood_signatures_are_the_documented_ones():
    assert list(_params(diffusion.pretrain_loss))[:5] == [
        "params",
        "cfg",
        "clean",
        "noisy",
        "p_mask",
    ]
    sft = list(_params(diffusion.sft_loss))
    assert sft[:6] == ["params", "cfg", "clean", "noisy", "p_mask", "prompt_lengths"]
    elbo = _params(likelihood.batch_elbo)
    assert list(elbo)[:6] == ["params", "cfg", "clean", "noisy", "p_mask", "prompt_len"]
    assert elbo["cfg_scale"][1] == 0.0
    ll = _params(likelihood.log_likelihood)
    assert list(ll)[:4] == ["params", "cfg", "prompt", "answer"]
    assert (ll["mc_num"][1], ll["batch_size"][1], ll["cfg_scale"][1]) == (128, 16, 0.0)
    assert list(_params(model.forward))[:4] == ["params", "cfg", "tokens", "attention_mask"]
    assert list(_params(convert.save_hf))[:3] == ["path", "cfg", "params"]
