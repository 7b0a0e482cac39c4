"""The SMART ``fhirclient`` library (R4 models) as a real client of ``/fhir`` on a live server:
create, read, update and delete a Patient and an Observation; the server's CapabilityStatement
is what the client fetches first."""

from __future__ import annotations

import pytest
from fhirclient import client
from fhirclient.models.codeableconcept import CodeableConcept
from fhirclient.models.coding import Coding
from fhirclient.models.fhirreference import FHIRReference
from fhirclient.models.humanname import HumanName
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.models.quantity import Quantity
from fhirclient.server import FHIRNotFoundException
from requests import HTTPError

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_fhirclient_crud(live_server: str) -> None:
    smart = client.FHIRClient(
        settings={"app_id": "medflow-test", "api_base": f"{live_server}/fhir/"}
    )
    server = smart.server
    assert server is not None

    p = Patient()
    name = HumanName()
    name.family, name.given = "Lovelace", ["Ada"]
    p.name, p.gender, p.birthDate = [name], "female", None
    created = p.create(server)
    assert created is not None and created["id"]
    pid = created["id"]

    read = Patient.read(pid, server)
    assert read.name[0].family == "Lovelace" and read.meta.versionId == "1"

    read.gender = "other"
    updated = read.update(server)
    assert updated["meta"]["versionId"] == "2"
    assert Patient.read(pid, server).gender == "other"

    obs = Observation()
    obs.status = "final"
    coding = Coding()
    coding.system, coding.code = "http://loinc.org", "8480-6"
    obs.code = CodeableConcept()
    obs.code.coding = [coding]
    obs.subject = FHIRReference()
    obs.subject.reference = f"Patient/{pid}"
    obs.valueQuantity = Quantity()
    obs.valueQuantity.value, obs.valueQuantity.unit = 120, "mmHg"
    oid = obs.create(server)["id"]
    assert Observation.read(oid, server).valueQuantity.value == 120

    read.delete(server)
    with pytest.raises(HTTPError) as exc:  # 410 Gone, raised by requests through fhirclient
        Patient.read(pid, server)
    assert exc.value.response is not None and exc.value.response.status_code == 410
    with pytest.raises(FHIRNotFoundException):
        Patient.read("no-such-patient", server)
