"""Embedding p2pinfer in your own app: three nodes in one process, one of them the requester.

    python tools/example_embed.py

Two nodes serve the middle layers of the built-in random-weights decoder; the third joins
through the first, waits until a route exists, streams a greedy generation token by token,
then embeds two sentences with MiniLM served the same way. Everything runs under trio; every
node is an async context manager that tears down its connections and sessions on exit.
"""

from __future__ import annotations

import tempfile

import trio

import p2pinfer


def config(home: str, name: str, *, serve: dict | None = None, bootstrap: list[str] = ()):
    return p2pinfer.NodeConfig.from_dict({
        "node": {"name": name, "data_dir": f"{home}/{name}", "network_id": "example-net"},
        "net": {"bootstrap": list(bootstrap), "dht": False},
        "control": {"enabled": False},
        **({"serve": serve} if serve else {}),
    })


async def main() -> None:
    home = tempfile.mkdtemp(prefix="p2pinfer-example-")
    gen_model, emb_model = "p2pinfer-tiny-llama", "all-minilm-l6-v2"
    async with p2pinfer.Node(config(home, "a", serve={"model": gen_model, "layers": [1, 4]})) as a:
        boot = [a.addrs[0]]
        async with (
            p2pinfer.Node(config(home, "b", serve={"model": gen_model, "layers": [4, 7]},
                                 bootstrap=boot)) as b,
            p2pinfer.Node(config(home, "c", serve={"model": emb_model, "layers": [1, 5]},
                                 bootstrap=boot)) as c,
            p2pinfer.Node(config(home, "me", bootstrap=boot)) as me,
        ):
            await me.wait_for_route(gen_model, timeout=60)
            await me.wait_for_route(emb_model, timeout=60)
            print(f"peers: {[p.peer_id[-6:] for p in me.peers()]} (me: {me.peer_id[-6:]})")
            print("generating (random weights: the words are noise): ", end="", flush=True)
            async for event in me.generate_stream("peer to peer", model=gen_model,
                                                  max_new_tokens=12):
                print(event.text, end="", flush=True)
            print()
            vecs = await me.embed(["a cat sat on the mat", "a kitten rested on the rug"],
                                  model=emb_model)
            print(f"cosine similarity of two paraphrases: {float(vecs[0] @ vecs[1]):.3f}")
            _ = (b, c)


if __name__ == "__main__":
    trio.run(main)
