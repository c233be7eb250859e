"""The catalogue: every parameter of every model accepted with a valid value and rejected with an invalid one.

Cases are built from the catalogue's own Param list, so a parameter added later is tested without edits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voxmill.audio.formats import wav_bytes
from voxmill.catalog import MODELS, ModelSpec, Param, get_model, validate
from voxmill.errors import InvalidItem, ValidationError

#: free-text parameters: any string is a valid value, so there is no invalid one to build
#: (whisper's ``language`` is a free code: the API's list is undocumented)
FREE_TEXT = {"text", "voice", "voice_id", "voice_url", "voice_name", "preset_url", "instructions", "language"}
URL_PARAMS = {"voice_url", "preset_url"}


def base_params(spec: ModelSpec, tmp_path: Path) -> dict[str, Any]:
    """The smallest valid request: the required parameters only."""
    params: dict[str, Any] = {}
    for param in spec.params:
        if param.required:
            params[param.name] = valid_value(param, tmp_path)
    return params


def valid_value(param: Param, tmp_path: Path) -> Any:
    if param.type == "str":
        if param.choices:
            return param.choices[-1]
        if param.name in URL_PARAMS:
            return "https://example.com/voice.wav"
        return "Hello there." if param.name == "text" else "something"
    if param.type == "bool":
        return True
    if param.type in ("int", "float"):
        if param.default is not None:
            return param.default
        low = param.minimum if param.minimum is not None else 0
        high = param.maximum if param.maximum is not None else low + 10
        middle = (low + high) / 2
        return int(middle) if param.type == "int" else middle
    if param.type == "json":
        return {key.name: valid_value(key, tmp_path) for key in param.json_keys}
    if param.type == "file":
        path = tmp_path / f"reference.{param.file_types[0] if param.file_types else 'wav'}"
        path.write_bytes(b"RIFF")
        return path
    raise AssertionError(param.type)


def invalid_values(param: Param, tmp_path: Path) -> list[tuple[str, Any]]:
    """(what is wrong, value) pairs the catalogue must reject for this parameter."""
    if param.type == "str":
        return [("not a choice", "definitely-not-a-choice")] if param.choices else []
    if param.type == "bool":
        return [("not a boolean", "maybe")]
    if param.type in ("int", "float"):
        cases: list[tuple[str, Any]] = [("not a number", "abc"), ("a boolean", True), ("infinite", "inf")]
        if param.maximum is not None:
            cases.append(("above maximum", param.maximum + 1))
        if param.minimum is not None:
            cases.append(("below minimum", param.minimum - 1))
        if param.type == "int":
            cases.append(("not whole", 1.5))
        return cases
    if param.type == "json":
        cases = [("unknown key", {"bogus_key": 1}), ("not JSON", "{speed"), ("not an object", "[1, 2]")]
        for key in param.json_keys:
            for why, bad in invalid_values(key, tmp_path):
                cases.append((f"{key.name} {why}", {key.name: bad}))
        return cases
    if param.type == "file":
        return [("bad extension", tmp_path / "reference.xyz"), ("no extension", tmp_path / "reference")]
    raise AssertionError(param.type)


ALL_PARAMS = [(model, param) for model, spec in MODELS.items() for param in spec.params]
PARAM_IDS = [f"{model}.{param.name}" for model, param in ALL_PARAMS]


def test_four_models():
    assert set(MODELS) == {"higgs2p5", "chatterbox", "qwen3-tts", "whisper_v3_turbo"}


@pytest.mark.parametrize(("model", "param"), ALL_PARAMS, ids=PARAM_IDS)
def test_every_param_accepts_a_valid_value(model: str, param: Param, tmp_path: Path):
    params = base_params(MODELS[model], tmp_path)
    value = valid_value(param, tmp_path)
    params[param.name] = value
    request = validate(model, params)
    assert param.name in request.params
    if param.type == "json":
        assert request.params[param.name] == value
        # the same object given as a JSON string (a manifest cell) is accepted too
        params[param.name] = json.dumps(value)
        assert validate(model, params).params[param.name] == value


def _invalid_cases():
    import tempfile

    placeholder = Path(tempfile.gettempdir())
    for (model, param), ident in zip(ALL_PARAMS, PARAM_IDS):
        for why, _ in invalid_values(param, placeholder):
            yield pytest.param(model, param, why, id=f"{ident}-{why.replace(' ', '_')}")


@pytest.mark.parametrize(("model", "param", "why"), list(_invalid_cases()))
def test_every_param_rejects_an_invalid_value(model: str, param: Param, why: str, tmp_path: Path):
    value = dict(invalid_values(param, tmp_path))[why]
    params = base_params(MODELS[model], tmp_path)
    params[param.name] = value
    with pytest.raises(ValidationError) as info:
        validate(model, params)
    inner = why.split()[0]
    if inner in {key.name for key in param.json_keys}:
        assert inner in str(info.value)  # the key inside the object is named, at least
    assert param.name in str(info.value)
    assert model in str(info.value)
    assert info.value.param is not None and info.value.param.split(".")[0] == param.name


def test_every_param_without_invalid_value_is_free_text(tmp_path: Path):
    untested = {p.name for _, p in ALL_PARAMS if not invalid_values(p, tmp_path)}
    assert untested <= FREE_TEXT, f"add invalid cases for {untested - FREE_TEXT}"


@pytest.mark.parametrize(
    ("model", "name"), [("higgs2p5", "voice_url"), ("qwen3-tts", "voice_url"), ("chatterbox", "preset_url")]
)
def test_url_params_must_be_http(model: str, name: str):
    with pytest.raises(ValidationError, match=name):
        validate(model, {"text": "hi", name: "file:///etc/passwd"})


def test_choices_are_case_insensitive():
    request = validate("qwen3-tts", {"text": "hi", "voice": "vivian", "language": "english"})
    assert request.params["voice"] == "Vivian" and request.params["language"] == "English"


def test_manifest_strings_are_coerced():
    request = validate(
        "chatterbox", {"text": "hi", "seed": "42", "temperature": "0.7", "stream": "false", "top_p": ""}
    )
    assert request.params["seed"] == 42 and request.params["temperature"] == 0.7
    assert request.params["stream"] is False and "top_p" not in request.params


def test_form_fields_are_strings():
    request = validate(
        "higgs2p5",
        {"text": "hi", "voice_settings": {"speed": 1.5}, "sampling": '{"top_k": 40}', "stream": False},
    )
    fields = request.form_fields()
    assert fields == {
        "model": "higgs2p5",
        "text": "hi",
        "voice_settings": '{"speed":1.5}',
        "sampling": '{"top_k":40}',
        "stream": "false",
    }


# --- rules between parameters ----------------------------------------------------------------------


@pytest.mark.parametrize("clone", ["voice_id", "voice_url"])
def test_qwen3_voice_excludes_cloning(clone: str):
    value = "v-1" if clone == "voice_id" else "https://example.com/v.wav"
    with pytest.raises(ValidationError, match=clone) as info:
        validate("qwen3-tts", {"text": "hi", "voice": "Ryan", clone: value})
    assert "voice" in str(info.value)
    assert validate("qwen3-tts", {"text": "hi", clone: value}).params[clone] == value
    assert validate("qwen3-tts", {"text": "hi", "voice": "Ryan"}).params["voice"] == "Ryan"


def test_chatterbox_text_soft_and_hard_limits():
    spec = get_model("chatterbox")
    assert spec.text_soft_limit == 1000
    ok = validate("chatterbox", {"text": "a" * 1000})
    assert ok.warnings == ()
    warned = validate("chatterbox", {"text": "a" * 1001})
    assert len(warned.warnings) == 1 and "1000" in warned.warnings[0]
    with pytest.raises(ValidationError, match="text") as info:
        validate("chatterbox", {"text": "a" * (spec.text_hard_limit + 1)})
    assert info.value.param == "text"
    # the hard limit is configurable per run
    with pytest.raises(ValidationError, match="limit of 500"):
        validate("chatterbox", {"text": "a" * 600}, text_hard_limit=500)


@pytest.mark.parametrize("model", [m for m, s in MODELS.items() if s.kind == "tts"])
@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_or_whitespace_text(model: str, text: str):
    with pytest.raises(ValidationError, match="text") as info:
        validate(model, {"text": text})
    assert info.value.param == "text"


@pytest.mark.parametrize(("model", "param"), [(m, p) for m, p in ALL_PARAMS if p.required], ids=str)
def test_required_missing(model: str, param: Param, tmp_path: Path):
    params = base_params(MODELS[model], tmp_path)
    del params[param.name]
    with pytest.raises(ValidationError, match=f"{param.name}.*required") as info:
        validate(model, params)
    assert info.value.param == param.name


@pytest.mark.parametrize("model", list(MODELS))
def test_unknown_param(model: str, tmp_path: Path):
    params = base_params(MODELS[model], tmp_path)
    params["speling_mistake"] = "x"
    with pytest.raises(ValidationError, match="speling_mistake") as info:
        validate(model, params)
    assert info.value.param == "speling_mistake"


def test_unknown_model():
    with pytest.raises(ValidationError, match="no-such-model") as info:
        validate("no-such-model", {"text": "hi"})
    assert info.value.param == "model"
    assert all(name in str(info.value) for name in MODELS)
    assert isinstance(info.value, InvalidItem)


def test_whisper_sends_language_and_format_defaults(tmp_path: Path):
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"RIFF")
    request = validate("whisper_v3_turbo", {"file": audio})
    assert request.params["language"] == "en" and request.params["response_format"] == "json"
    assert request.files() == {"file": audio}
    assert "file" not in request.form_fields()
    assert request.output_format == "json"


def test_qwen3_output_format_follows_response_format():
    assert validate("qwen3-tts", {"text": "hi", "response_format": "MP3"}).output_format == "mp3"
    assert validate("higgs2p5", {"text": "hi"}).output_format == "wav"


@pytest.fixture(scope="module")
def validating_server():
    """A null-engine local server: it validates with the same catalogue before doing anything."""
    from voxmill.server import ServerConfig, serve_in_thread

    with serve_in_thread(ServerConfig(token="catalog-test", engine="null")) as server:
        yield server


_TINY_WAV = wav_bytes(np.zeros(4800, dtype="int16"), 24000)


def _multipart(params: dict[str, Any]) -> list[tuple[str, Any]]:
    parts: list[tuple[str, Any]] = []
    for name, value in params.items():
        if isinstance(value, Path):
            parts.append((name, (value.name, _TINY_WAV)))
        elif isinstance(value, (dict, list)):
            parts.append((name, (None, json.dumps(value))))
        elif isinstance(value, bool):
            parts.append((name, (None, "true" if value else "false")))
        else:
            parts.append((name, (None, str(value))))
    return parts


@pytest.mark.parametrize(("model", "param", "why"), list(_invalid_cases()))
def test_the_local_server_rejects_the_same_invalid_value(
    validating_server, model: str, param: Param, why: str, tmp_path: Path
):
    import httpx

    params = {"model": model, **base_params(MODELS[model], tmp_path)}
    params[param.name] = dict(invalid_values(param, tmp_path))[why]
    response = httpx.post(
        f"{validating_server.base_url}/api/v1/generate",
        headers={"Authorization": f"Bearer {validating_server.token}"},
        files=_multipart(params),
    )
    assert response.status_code in (400, 422), response.text
    body = response.json()
    assert param.name in body["error"] and body["param"].split(".")[0] == param.name


@pytest.mark.parametrize(("model", "param"), ALL_PARAMS, ids=PARAM_IDS)
def test_the_local_server_accepts_every_valid_value(validating_server, model: str, param: Param, tmp_path: Path):
    import httpx

    params = {"model": model, **base_params(MODELS[model], tmp_path)}
    value = valid_value(param, tmp_path)
    if param.name == "voice_id":
        return  # a voice_id must be one the server issued (tested with uploads)
    params[param.name] = value
    if param.name == "stream":
        params[param.name] = False  # streaming goes over the WebSocket locally
    if model == "qwen3-tts" and param.name in ("voice_url",) and "voice" in params:
        del params["voice"]
    response = httpx.post(
        f"{validating_server.base_url}/api/v1/generate",
        headers={"Authorization": f"Bearer {validating_server.token}"},
        files=_multipart(params),
    )
    assert response.status_code == 200, response.text
