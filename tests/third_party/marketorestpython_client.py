"""Drives the unmodified `marketorestpython` client against `marketo-sync simulate`.

Usage: marketorestpython_client.py BASE_URL CLIENT_ID CLIENT_SECRET

The client builds `https://<munchkin>.mktorest.com`; its public `host` attribute is the
configurable base URL, so it is pointed at the simulator by setting `host` (no client code is
changed). Prints one line `RESULT ok ...` on success; any failure raises and exits non-zero.
"""

import csv
import io
import json
import sys
import time

from marketorestpython.client import MarketoClient


def main():
    base, client_id, client_secret = sys.argv[1:4]
    mc = MarketoClient("000-SIM-000", client_id, client_secret, max_retry_time=30)
    mc.host = base.rstrip("/")

    # Authenticate (Identity).
    mc.authenticate()
    assert mc.token, "no access token"

    # Describe leads.
    described = mc.execute(method="describe")
    names = {f["rest"]["name"] for f in described if "rest" in f}
    for needed in ("id", "email", "firstName", "lastName", "updatedAt"):
        assert needed in names, f"describe lacks {needed}"

    # Sync leads (createOrUpdate by email).
    stamp = str(int(time.time() * 1000))
    emails = [f"tp{stamp}-{i}@example.com" for i in range(5)]
    synced = mc.execute(
        method="create_update_leads",
        leads=[{"email": e, "firstName": "Third", "lastName": f"Party{i}"} for i, e in enumerate(emails)],
        action="createOrUpdate",
        lookupField="email",
    )
    assert len(synced) == 5, synced
    assert all(r["status"] == "created" for r in synced), synced
    ids = [r["id"] for r in synced]
    updated = mc.execute(
        method="create_update_leads",
        leads=[{"email": emails[0], "lastName": "Updated"}],
        action="updateOnly",
        lookupField="email",
    )
    assert updated[0]["status"] == "updated" and updated[0]["id"] == ids[0], updated

    # Page through leads by filter (batch size 2 forces nextPageToken paging).
    paged = mc.execute(
        method="get_multiple_leads_by_filter_type",
        filterType="email",
        filterValues=",".join(emails),
        fields=["id", "email", "lastName"],
        batchSize=2,
    )
    assert sorted(r["id"] for r in paged) == sorted(ids), paged
    by_id = {r["id"]: r for r in paged}
    assert by_id[ids[0]]["lastName"] == "Updated", by_id[ids[0]]
    by_ids = mc.execute(
        method="get_multiple_leads_by_filter_type",
        filterType="id",
        filterValues=[str(i) for i in ids],
        fields=["id", "email"],
    )
    assert sorted(r["id"] for r in by_ids) == sorted(ids), by_ids

    # Static list membership through the client's tunnelled GETs.
    added = mc.execute(method="add_leads_to_list", listId=1002, id=ids[:2])
    assert [r["status"] for r in added] == ["added", "added"], added
    member = mc.execute(method="member_of_list", listId=1002, id=[ids[0], ids[2]])
    assert [r["status"] for r in member] == ["memberof", "notmemberof"], member
    in_list = mc.execute(method="get_multiple_leads_by_list_id", listId=1002, fields=["id"], batchSize=1)
    assert sorted(r["id"] for r in in_list) == sorted(ids[:2]), in_list

    # Lead export to completion.
    start = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime(time.time() - 86400))
    end = time.strftime("%Y-%m-%dT23:59:59Z", time.gmtime(time.time() + 86400))
    job = mc.execute(
        method="create_leads_export_job",
        fields=["id", "email", "lastName"],
        filters={"createdAt": {"startAt": start, "endAt": end}},
    )
    lead_csv = run_export(mc, "leads", job[0]["exportId"])
    rows = list(csv.DictReader(io.StringIO(lead_csv)))
    exported = {int(r["id"]): r for r in rows}
    for i in ids:
        assert i in exported, f"lead {i} not in the export"
    assert exported[ids[0]]["lastName"] == "Updated"

    # Activity export to completion (New Lead = 12, Change Data Value = 13).
    job = mc.execute(
        method="create_activities_export_job",
        filters={"createdAt": {"startAt": start, "endAt": end}, "activityTypeIds": [12, 13]},
    )
    act_csv = run_export(mc, "activities", job[0]["exportId"])
    acts = list(csv.DictReader(io.StringIO(act_csv)))
    new_lead = {int(a["leadId"]) for a in acts if a["activityTypeId"] == "12"}
    for i in ids:
        assert i in new_lead, f"no New Lead activity for {i}"
    for a in acts:
        if a.get("attributes") not in (None, "", "null"):
            assert isinstance(json.loads(a["attributes"]), dict), a

    print(
        f"RESULT ok described={len(names)} synced={len(ids)} paged={len(paged)} "
        f"lead_rows={len(rows)} activity_rows={len(acts)}"
    )


def run_export(mc, entity, export_id):
    enq = mc.execute(method=f"enqueue_{entity}_export_job", job_id=export_id)
    assert enq[0]["status"] in ("Queued", "Processing", "Completed"), enq
    for _ in range(600):
        status = mc.execute(method=f"get_{entity}_export_job_status", job_id=export_id)[0]
        if status["status"] == "Completed":
            break
        assert status["status"] in ("Queued", "Processing"), status
        time.sleep(0.2)
    else:
        raise AssertionError(f"{entity} export {export_id} never completed")
    data = mc.execute(method=f"get_{entity}_export_job_file", job_id=export_id)
    assert isinstance(data, bytes), f"{entity} file: {data!r}"
    text = data.decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert status["numberOfRecords"] == len(rows), (status, len(rows))
    return text


if __name__ == "__main__":
    main()
