"""Encrypted, pinned links: a pool on wss/https, volunteers that check its key, clients that trust its certificate."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import httpx2 as httpx
import pytest
from openai import AsyncOpenAI

from app.profile import quick_profile
from app.volunteer import Volunteer, VolunteerConfig
from cli.commands import stream_generate
from core.identity import Identity
from core.errors import AuthFailed, ConfigError
from core.tls import CERT_FILE_NAME
from server.config import CoordinatorConfig
from server.coordinator import Coordinator
from server.generation import generate
from server.sampling import SamplingParams
from tests.conftest import live_pool

pytestmark = [pytest.mark.timeout(180)]


def volunteer(tmp_path: Path, name: str, **config: object) -> Volunteer:
    profile = quick_profile(memory_bytes=2**30, name=name)
    return Volunteer(VolunteerConfig(data_dir=tmp_path / name, name=name, profile=profile, **config))  # type: ignore[arg-type]


async def test_volunteers_join_over_wss_and_clients_trust_the_pool_certificate(tiny_model, tmp_path: Path) -> None:  # noqa: ANN001
    defaults = {name: CoordinatorConfig.__dataclass_fields__[name].default for name in ("probation_steps", "verify_share")}
    async with live_pool(tiny_model, tmp_path, volunteers=2, insecure_loopback=False, **defaults) as pool:  # the product's defaults
        coordinator = pool.coordinator
        assert coordinator.url.startswith("https://") and coordinator.ws_url.startswith("wss://")  # type: ignore[attr-defined]
        await pool.wait_ready()
        ids = coordinator.tokenizer.encode("t5 t6 t7")  # type: ignore[attr-defined]
        expected = "".join([e.text async for e in generate(coordinator.pool, coordinator.tokenizer, ids, SamplingParams(max_tokens=8, ignore_eos=True))])  # type: ignore[attr-defined]
        trust = ssl.create_default_context(cafile=str(tmp_path / "coordinator" / CERT_FILE_NAME))
        async with httpx.AsyncClient(verify=trust) as http:
            client = AsyncOpenAI(base_url=coordinator.url + "/v1", api_key="unused", http_client=http, max_retries=0)  # type: ignore[attr-defined]
            answer = await client.completions.create(model=coordinator.model.manifest.name, prompt="t5 t6 t7", max_tokens=8, temperature=0)  # type: ignore[attr-defined]
            assert answer.choices[0].text == expected
        # The command line's client pins the pool key, and refuses another.
        body = {"prompt": "t5 t6 t7", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        lines = await asyncio.to_thread(lambda: list(stream_generate(coordinator.url, body, pool_id=coordinator.pool_id)))  # type: ignore[attr-defined]
        assert "".join(str(line.get("text", "")) for line in lines) == expected
        with pytest.raises(AuthFailed, match="impersonating"):
            await asyncio.to_thread(lambda: list(stream_generate(coordinator.url, body, pool_id=Identity.generate().fingerprint)))  # type: ignore[attr-defined]
        # A client that trusts only the public CAs is refused: the certificate is self-signed.
        async with httpx.AsyncClient() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(coordinator.url + "/healthz")  # type: ignore[attr-defined]


async def test_a_pool_with_another_key_is_refused_before_anything_is_sent(tiny_model, tmp_path: Path) -> None:  # noqa: ANN001
    real = Coordinator(CoordinatorConfig(data_dir=tmp_path / "real", port=0), tiny_model)
    impostor = Coordinator(CoordinatorConfig(data_dir=tmp_path / "impostor", port=0, open_pool=True), tiny_model)
    await real.start()
    await impostor.start()
    try:
        invite = real.invite(ttl_s=600)
        victim = volunteer(tmp_path, "victim", invite=invite, url=impostor.ws_url)
        with pytest.raises(AuthFailed, match=f"presents key {impostor.pool_id}.*pinned {real.pool_id}"):
            await victim.run()
        assert impostor.registry.members() == []
        refused = [e["text"] for e in impostor.pool.events.entries if e["kind"] in ("join", "refused")]
        assert refused == ["refused a volunteer from 127.0.0.1: connection closed by peer (1000)"]  # no hello, no invite
        # An explicit pool id (say, from an mDNS record the user agreed to) is enforced too.
        other = volunteer(tmp_path, "other", url=real.ws_url, pool_id=impostor.pool_id)
        with pytest.raises(AuthFailed, match="impersonating"):
            await other.run()
    finally:
        await impostor.stop()
        await real.stop()


async def test_plain_ws_needs_the_development_flag_on_both_sides(tiny_model, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(ConfigError, match="only on this machine"):
        CoordinatorConfig(data_dir=tmp_path / "c", host="0.0.0.0", insecure_loopback=True)
    plain = Coordinator(CoordinatorConfig(data_dir=tmp_path / "plain", port=0, insecure_loopback=True, open_pool=True), tiny_model)
    await plain.start()
    try:
        assert plain.ws_url.startswith("ws://127.0.0.1:")
        with pytest.raises(ConfigError, match="refusing unencrypted"):
            volunteer(tmp_path, "careful", url=plain.ws_url)
        with pytest.raises(ConfigError, match="only on this machine"):
            volunteer(tmp_path, "remote", url="ws://192.0.2.1:8765/ws", insecure_loopback=True)
        joined = volunteer(tmp_path, "developer", url=plain.ws_url, insecure_loopback=True)
        task = asyncio.create_task(joined.run())
        for _ in range(200):
            if joined.pool_id is not None:
                break
            await asyncio.sleep(0.05)
        assert joined.pool_id == plain.pool_id
        joined.request_drain()
        await asyncio.wait_for(task, 30)
    finally:
        await plain.stop()
