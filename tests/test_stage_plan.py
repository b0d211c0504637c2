"""Planning without per-unit requests: the anti-join on done parts, the embed unit plan, and the order-free digest
(pure functions and local files; no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from cion_dist.embed.plan import group_rows, write_plan
from cion_dist.errors import DataError
from cion_dist.stage.plan import blocks_for, not_done
from cion_dist.storage.fs import Storage
from cion_dist.storage.listing import name_hash
from cion_dist.storage.reports import combine_digest, digest_words, part_record
from cion_dist.storage.stage_io import StageOutput, read_table, unit_filename


def test_not_done_drops_units_with_a_done_part():
    batch = pa.table({"video_id": [f"v{i}" for i in range(6)], "uri": ["u"] * 6})
    done = np.sort(name_hash([unit_filename("v1"), unit_filename("v4"), unit_filename("other")]))
    assert not_done(batch, "video_id", done).column("video_id").to_pylist() == ["v0", "v2", "v3", "v5"]
    assert not_done(batch, "video_id", np.zeros(0, np.uint64)).num_rows == 6


def test_blocks_for_balances_and_bounds():
    assert blocks_for(6, 2) == 6 and blocks_for(10_000, 4) == 32 and blocks_for(10**7, 10_000) == 4096
    assert blocks_for(0, 3) == 1


def test_group_rows_cuts_at_the_crop_budget():
    t = group_rows(["a", "b", "c", "d", "e"], [3, 3, 5, 1, 1], "r1", 6)
    assert t.column("parts").to_pylist() == [["a", "b"], ["c", "d"], ["e"]]
    assert t.column("crops").to_pylist() == [6, 6, 1] and t.column("unit").to_pylist()[0] == "r1-00000"


def test_digest_is_order_and_grouping_free():
    names, shas = [f"p{i}" for i in range(5)], [f"{i:064x}" for i in range(5)]
    w = digest_words(names, shas)
    assert combine_digest(5, w) == combine_digest(5, w[::-1]) == combine_digest(5, np.concatenate([w[3:], w[:3]]))
    assert combine_digest(5, w) != combine_digest(5, digest_words(names, shas[:4] + ["0" * 63 + "f"]))
    assert combine_digest(4, w[:4]) != combine_digest(5, w)


def test_embed_plan_keeps_the_newest_report_of_a_redone_part(tmp_path):
    st = Storage()
    ingest = StageOutput.create(str(tmp_path), "ingest", "i", st)
    t = pa.table({"x": [1]})
    w1 = ingest.report_writer()
    w1.add([part_record(unit_filename(v), ingest.write_unit(v, t), crops=2) for v in ("a", "b", "c")])
    w1.flush()
    w2 = ingest.report_writer()  # "b" redone later: the stale row of the first report must not plan it twice
    w2.add([part_record(unit_filename("b"), ingest.write_unit("b", pa.table({"x": [1, 2]})), crops=2)])
    w2.flush()
    out = StageOutput.create(str(tmp_path), "embed", "e", st)
    files, n = write_plan(ingest, out, crops_per_unit=3, parts_per_unit=8)
    planned = [p for f in files for ps in read_table(f, st).column("parts").to_pylist() for p in ps]
    assert sorted(planned) == sorted(unit_filename(v) for v in ("a", "b", "c")) and n == 2
    again, _ = write_plan(ingest, out, crops_per_unit=3, parts_per_unit=8)
    assert [read_table(f, st).to_pylist() for f in again] == [read_table(f, st).to_pylist() for f in files]


def test_check_parts_judges_each_listed_part_by_its_newest_report(tmp_path):
    st = Storage()
    out = StageOutput.create(str(tmp_path), "ingest", "i", st)
    t1, t2 = pa.table({"x": [1]}), pa.table({"x": [1, 2]})
    w = out.report_writer()
    recs = [part_record(unit_filename(v), out.write_unit(v, t1), rows=1) for v in "abcd"]
    w.add(recs + [part_record(unit_filename("gone"), out.write_unit("gone", t1), rows=1)])
    w.flush()
    later = out.report_writer()  # b redone (newer report, same file twice: the later row wins)
    stale = part_record(unit_filename("b"), out.write_unit("b", t2), rows=7)
    later.add([stale, part_record(unit_filename("b"), out.write_unit("b", t2), rows=2)])
    later.flush()
    out.write_unit("c", t2)  # rewritten after its report: changed
    out.write_unit("e", t1)  # never reported
    fs = st.fs(out.uri)[0]
    fs.rm(st.fs(out.unit_uri("gone"))[1])
    chk = out.check_parts()
    names = {unit_filename(v): v for v in "abcde"}
    assert sorted(names[n] for n in out.part_names(chk.done)) == ["a", "b", "d"]
    assert chk.changed == [unit_filename("c")] and out.part_names(chk.unreported) == [unit_filename("e")]
    assert chk.missing == 1 and chk.totals == {"rows": 1 + 2 + 1}
    with pytest.raises(DataError, match="changed after.*" + unit_filename("c")):
        out.combine()
    fs.rm(st.fs(out.unit_uri("c"))[1])  # c gone; e is read back and hashed at combine
    full = StageOutput.create(str(tmp_path), "ingest", "j", st)  # the same parts, all read back: same digest
    for v, t in (("a", t1), ("b", t2), ("d", t1), ("e", t1)):
        full.write_unit(v, t)
    got, want = out.combine(), full.combine()
    assert (got.count, got.unreported, got.totals) == (4, 1, {"rows": 4}) and got.digest == want.digest
    assert out.check_parts().missing == 2
