"""Interoperability: A2A agents and MCP servers join a federation as agents (gateways), and the
federation answers as an A2A agent and as an MCP server. Uses the official `a2a-sdk` and `mcp`
packages (the `interop` extra); nothing here speaks JSON-RPC by hand.

- `a2a_gateway`: an A2A agent card → a VCV; FoA tasks → A2A messages and tasks.
- `mcp_gateway`: an MCP server's tools → a VCV (or one per tool); a draft → one tool call.
- `a2a_server`: `foa a2a serve`, the federation behind an agent card.
- `mcp_server`: `foa mcp serve`, the federation as tools `ask`, `route`, `agents`.
"""
