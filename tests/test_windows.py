"""Windows, batch order and direction: backward windows are the reversed forward windows, order is (seed, step)."""

import numpy as np

from aot_ray.data.prepare import MARKER, data_dir, prepare
from aot_ray.data.tokenizer import CharTokenizer
from aot_ray.data.windows import BatchOrder, Windows, eval_indices, orient, with_bos
from aot_ray.spec import LinearData


def test_windows_arithmetic():
    w = Windows(np.arange(100), context_length=10, stride=10)
    assert len(w) == 10
    assert w.get(np.array([3])).tolist() == [list(range(30, 40))]
    assert len(Windows(np.arange(100), 10, 5)) == 19
    assert len(Windows(np.arange(10), 10, 10)) == 1


def test_backward_is_reversed_forward_and_bos_scores_every_token():
    w = Windows(np.arange(1, 50), 8, 8)
    idx = np.array([2, 0, 4])
    fw = orient(w.get(idx), "forward")
    bw = orient(w.get(idx), "backward")
    assert np.array_equal(bw, fw[:, ::-1])
    for batch in (fw, bw):
        x, y = with_bos(batch, bos_id=0)
        assert (x[:, 0] == 0).all() and np.array_equal(x[:, 1:], y[:, :-1])
    # both directions score the same multiset of tokens
    assert sorted(with_bos(fw, 0)[1].ravel()) == sorted(with_bos(bw, 0)[1].ravel())


def test_batch_order_is_a_pure_function_of_seed_and_position():
    a, b = BatchOrder(37, seed=5), BatchOrder(37, seed=5)
    seq = a.indices(0, 200)
    assert np.array_equal(seq, b.indices(0, 200))
    assert np.array_equal(seq[120:150], BatchOrder(37, 5).indices(120, 30))  # jump straight to a position
    for e in range(5):  # every epoch is a permutation
        assert sorted(seq[e * 37 : (e + 1) * 37]) == list(range(37))
    assert not np.array_equal(seq, BatchOrder(37, seed=6).indices(0, 200))


def test_eval_indices_fixed_subset():
    assert eval_indices(10, 100).tolist() == list(range(10))
    idx = eval_indices(1000, 64)
    assert len(idx) == 64 and idx[0] == 0 and idx[-1] == 999


def test_char_tokenizer_round_trip():
    tok = CharTokenizer("01: \n")
    ids = tok.encode("0110 : 1010\n")
    assert tok.decode(ids) == "0110 : 1010\n"
    assert ids.min() >= 1 and tok.vocab_size == 6


def test_prepare_builds_once_and_reuses(tmp_path):
    data = LinearData(bits=8, k=2, n_samples=100)
    p1, built1 = prepare(data, tmp_path)
    p2, built2 = prepare(data, tmp_path)
    assert built1 and not built2
    assert (data_dir(tmp_path, data) / MARKER).is_file()
    assert p2.manifest["tokens"]["train"] == len(p2.train) == 90 * data.line_tokens()
    assert isinstance(p2.train, np.memmap)
    assert [p.name for p in (tmp_path / "data").iterdir()] == [data_dir(tmp_path, data).name]
