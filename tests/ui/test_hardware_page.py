"""Step 2: detect this machine or describe a server; invalid values are explained next to the field."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.ui.conftest import texts


@pytest.fixture
def hardware(app: AppTest) -> AppTest:
    return app.switch_page("views/hardware.py").run()


def describe(app: AppTest) -> AppTest:
    app.radio(key="hw_mode").set_value("describe").run()
    assert not app.exception
    return app


def test_detect_this_machine(hardware: AppTest) -> None:
    assert "No target chosen yet" in texts(hardware)
    hardware.button(key="detect_button").click().run()
    assert not hardware.exception
    detected = hardware.session_state["wizard"].detected
    assert detected is not None and detected.origin == "detected"
    if detected.gpus:
        assert detected.gpus[0].name in set(hardware.dataframe[0].value["Name"])
    else:
        assert "No NVIDIA GPU was found" in texts(hardware)
    hardware.button(key="use_detected").click().run()
    assert hardware.session_state["wizard"].target == detected
    assert "The plan will use" in texts(hardware)


def test_describe_a_server(hardware: AppTest) -> None:
    describe(hardware)
    hardware.selectbox(key="hw_preset").set_value("l4")
    hardware.number_input(key="hw_gpu_count").set_value(2)
    hardware.text_input(key="hw_driver").set_value("550.54.15").run()
    assert not hardware.error
    hardware.button(key="use_described").click().run()
    target = hardware.session_state["wizard"].target
    assert target.gpu_count == 2 and target.cuda_version == "12.4"
    assert "2 × NVIDIA L4" in texts(hardware)


def test_negative_memory_is_rejected_next_to_the_field(hardware: AppTest) -> None:
    describe(hardware)
    hardware.number_input(key="hw_gpu_memory").set_value(-8.0).run()
    assert len(hardware.error) == 1
    assert "gpu_memory_gib -8.0 is not valid" in hardware.error[0].value
    assert "Invalid hardware" in hardware.error[0].value
    assert hardware.button(key="use_described").disabled
    assert hardware.session_state["wizard"].target is None


def test_cpu_only_server_with_bad_ram(hardware: AppTest) -> None:
    describe(hardware)
    hardware.checkbox(key="hw_cpu_only").check()
    hardware.number_input(key="hw_ram").set_value(-1.0).run()
    assert "ram_gib -1.0 is not valid" in hardware.error[0].value
    hardware.number_input(key="hw_ram").set_value(64.0).run()
    assert not hardware.error
    hardware.button(key="use_described").click().run()
    assert hardware.session_state["wizard"].target.is_cpu_only


def test_described_values_survive_a_page_switch(hardware: AppTest) -> None:
    describe(hardware)
    hardware.number_input(key="hw_gpu_count").set_value(4).run()
    hardware.switch_page("views/model.py").run()
    hardware.switch_page("views/hardware.py").run()
    assert hardware.radio(key="hw_mode").value == "describe"
    assert hardware.number_input(key="hw_gpu_count").value == 4


def test_nodes_of_a_cluster_are_described_with_the_server(hardware: AppTest) -> None:
    describe(hardware)
    hardware.selectbox(key="hw_preset").set_value("a100-40gb")
    hardware.number_input(key="hw_gpu_count").set_value(4)
    hardware.number_input(key="hw_nodes").set_value(2).run()
    assert not hardware.exception
    assert hardware.session_state["wizard"].options.nodes == 2
