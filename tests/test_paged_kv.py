"""The paged KV allocator: block counts, shared prefix blocks, copy-on-write, fragmentation and bytes by hand."""

from __future__ import annotations

import pytest

from explorer.core.analysis import batching as bt
from explorer.core.analysis import paged_kv as pk
from explorer.core.errors import InputError

PREFIX = list(range(100, 132))  # 32 tokens: two full blocks of 16


def test_common_prefix_shares_its_full_blocks():
    a = PREFIX + list(range(8))  # 40 tokens: 2 shared + 1 own block holding 8
    b = PREFIX + list(range(50, 55))  # 37 tokens: 2 shared + 1 own block holding 5
    lay = pk.simulate([a, b], [40, 37], bytes_per_token=10, max_length=128)
    assert lay.tables[0][:2] == lay.tables[1][:2]  # the same physical blocks
    assert lay.tables[0][2] != lay.tables[1][2]
    assert lay.n_blocks == 4 and lay.blocks_unshared == 6 and lay.shared_blocks == 2
    assert lay.tokens_stored == 32 + 8 + 5
    assert lay.internal_fragmentation == (16 - 8) + (16 - 5)
    assert lay.paged_bytes == 4 * 16 * 10
    assert lay.unshared_bytes == 6 * 16 * 10
    assert lay.shared_saved_bytes == 2 * 16 * 10
    assert lay.contiguous_bytes == 2 * 128 * 10
    assert lay.saved_bytes == 2 * 128 * 10 - 4 * 16 * 10


def test_only_full_blocks_with_the_same_whole_prefix_are_shared():
    a = PREFIX + [1] * 8
    b = [7] + PREFIX[1:] + [1] * 8  # differs in its first token: the second block's content matches, its prefix not
    c = PREFIX[:20]  # shares the first full block only; its partial block (4 tokens) is its own
    lay = pk.simulate([a, b, c], [40, 40, 20], bytes_per_token=1, max_length=64)
    assert lay.tables[0][0] == lay.tables[2][0] != lay.tables[1][0]
    assert lay.tables[0][1] != lay.tables[1][1]
    assert lay.shared_blocks == 1 and lay.n_blocks == 3 + 3 + 1


def test_decode_allocates_a_block_every_16_tokens_and_records_use():
    seq = list(range(20)) + list(range(500, 530))  # prompt 20, then 30 generated: 50 tokens -> 4 blocks
    lay = pk.simulate([seq], [20], bytes_per_token=2, max_length=64)
    assert lay.n_blocks == 4 and lay.fill == (16, 16, 16, 2)
    assert lay.in_use[0] == 2 and lay.in_use[-1] == 4 and len(lay.in_use) == 31
    assert lay.in_use[12] == 2 and lay.in_use[13] == 3  # token 33 (the 13th generated) opens block 3


def test_forked_prompt_shares_its_partial_block_until_written():
    prompt = list(range(20))  # one full block + a partial one of 4
    a, b, c = prompt + [1, 2], prompt + [3, 4], prompt + [5]
    lay = pk.simulate([a, b, c], [20, 20, 20], bytes_per_token=1, max_length=32)
    assert lay.tables[0][0] == lay.tables[1][0] == lay.tables[2][0]
    assert lay.cow_copies == 2  # the first two writers copy; the last one writes in the original
    assert len({t[1] for t in lay.tables}) == 3
    assert lay.n_blocks == 4 and lay.fill[lay.tables[2][1]] == 5


@pytest.mark.parametrize(("seqs", "lengths", "words"), [
    ([], [], "No sequences"),
    ([[1, 2]], [3], "prompt length"),
    ([[1, 2]], [0], "prompt length"),
    ([[1] * 70], [5], "longer than the max length"),
])
def test_bad_input_gets_a_message(seqs, lengths, words):
    with pytest.raises(InputError, match=words):
        pk.simulate(seqs, lengths, bytes_per_token=1, max_length=64)


def test_layout_of_a_real_batch_with_a_common_chat_prefix(tiny_llama):
    prompts = ["What is the capital of France?", "What is the capital of Italy?"]
    system = "You are a helpful assistant who answers questions about geography briefly and clearly."
    rows = bt.encode_prompts(tiny_llama, prompts, 4, chat=True, system=system)
    res = bt.run_batch(tiny_llama, rows, 4, stop_at_eos=False)
    common = next(i for i, (x, y) in enumerate(zip(*rows, strict=False)) if x != y)
    lay = pk.from_batch(res, max_length=tiny_llama.info.context_length)
    assert lay.shared_blocks == common // 16 >= 1
    info = tiny_llama.info
    assert lay.bytes_per_token == info.n_layers * info.n_kv_heads * info.head_dim * 2 * 4
    assert pk.padded_bytes(res) == res.input_ids.size * lay.bytes_per_token
    assert lay.tokens_stored == sum(len(r) + 4 for r in rows) - (common // 16) * 16


def test_a_repeated_prompt_is_a_fork_copied_on_its_first_write(tiny_llama):
    prompt = "Once upon a time there was a small language model"
    rows = bt.encode_prompts(tiny_llama, [prompt, prompt], 3)
    assert len(rows[0]) % 16 != 0  # its last prompt block is partly filled
    lay = pk.from_batch(bt.run_batch(tiny_llama, rows, 3, stop_at_eos=False), max_length=64)
    assert lay.tables[0][:-1] == lay.tables[1][:-1] and lay.tables[0][-1] != lay.tables[1][-1]
    assert lay.cow_copies == 1 and lay.shared_blocks == len(rows[0]) // 16
