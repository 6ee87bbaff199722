"""response_format passes the gateway unchanged; malformed ones and unsupported schema keywords
are refused there (400 naming response_format) and never reach the pod."""

from __future__ import annotations

import asyncio

import aiohttp
from gateway_fakes import KEY_A, FakePod, MemoryKeys, client
from gateway_fakes import serve as _serve

from deepserve.operator.gateway.server import Gateway, ModelRoute
from deepserve.operator.tenancy import ModelSelector, Principal, TenantPlan

FORMAT = {"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": {
    "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}


def test_response_format_reaches_the_pod_and_bad_ones_do_not() -> None:
    pod = FakePod()

    async def main() -> None:
        pod_runner, pod_url = await _serve(pod.app())
        keys = MemoryKeys({KEY_A: Principal("tenant-a", "aaaaaaaaaaaa", TenantPlan(ModelSelector(allow_all=True)))})
        gw_runner, gw_url = await _serve(Gateway(keys, [ModelRoute("team", "llama", pod_url, aliases=("llama",))]).app())
        try:
            await client(gw_url).completions.create(model="llama", prompt="hi", max_tokens=4,
                                                    extra_body={"response_format": FORMAT})
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY_A}"}) as s:
                for fmt, needle in [({"type": "yaml"}, "type must be one of"),
                                    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {
                                        "type": "array", "uniqueItems": True}}}, "'uniqueItems' at #")]:
                    async with s.post(gw_url + "/v1/completions",
                                      json={"model": "llama", "prompt": "x", "response_format": fmt}) as r:
                        error = (await r.json())["error"]
                        assert r.status == 400 and error["param"] == "response_format"
                        assert needle in error["message"]
        finally:
            await gw_runner.cleanup()
            await pod_runner.cleanup()

    asyncio.run(main())
    assert [body["response_format"] for _, body in pod.seen] == [FORMAT]
