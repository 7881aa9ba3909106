package main

import (
	"context"
	"encoding/json"
	"net/http"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpTools are the tools the echo MCP server offers: a GitHub server's, as
// the coding-agent example policies name them.
var mcpTools = []string{
	"github.list_issues", "github.get_file", "github.get_commit",
	"github.create_pull_request", "github.delete_repository",
}

// newMCPHandler returns a Streamable HTTP MCP server whose every tool
// answers "NAME called with ARGUMENTS".
func newMCPHandler() http.Handler {
	srv := mcp.NewServer(&mcp.Implementation{Name: "echo-github", Version: "1.0.0"}, nil)
	for _, name := range mcpTools {
		mcp.AddTool(srv, &mcp.Tool{Name: name, Description: "echoes " + name},
			func(_ context.Context, req *mcp.CallToolRequest, in map[string]any) (*mcp.CallToolResult, any, error) {
				args, _ := json.Marshal(in)
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: req.Params.Name + " called with " + string(args)}}}, nil, nil
			})
	}
	return mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{JSONResponse: true})
}
