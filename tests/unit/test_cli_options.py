"""Options that mirror a settings object are built from it: one default, one help text, one flag per field."""

from __future__ import annotations

import inspect

from typer.testing import CliRunner

from msml.cli import app
from msml.cli.serving import gateway
from msml.serving.settings import GatewayConfig, cli_options


def test_gateway_options_are_gateway_config_fields():
    parameters = inspect.signature(gateway).parameters
    for name, (default, flag, _help, _low) in cli_options().items():
        option = parameters[name].default
        assert option.default == default == getattr(GatewayConfig, name)
        assert flag in option.param_decls
    assert "tuning" not in parameters


def test_a_value_below_a_fields_bound_is_refused_with_the_flag_named():
    result = CliRunner().invoke(app, ["gateway", "--max-batch-rows", "0"])
    assert result.exit_code == 2 and "--max-batch-rows" in result.output


def test_the_monitoring_port_options_are_the_flags_a_busy_port_names():
    """`msml demo` and `msml monitoring up` share one option per monitoring port: the flag the port-busy message
    names (monitoring.stack.PORT_OPTIONS) and the component's default port."""
    from msml.cli.monitoring import monitoring_up
    from msml.cli.ops import demo
    from msml.config import DEFAULT_PORTS
    from msml.monitoring.stack import PORT_OPTIONS

    for command in (demo, monitoring_up):
        parameters = inspect.signature(command).parameters
        for component, flag in PORT_OPTIONS.items():
            option = parameters[f"{component}_port"].default
            assert option.param_decls == (flag,) and option.default == getattr(DEFAULT_PORTS, component)
