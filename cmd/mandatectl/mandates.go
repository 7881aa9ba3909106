package main

// mandateCommands are the mandate lifecycle commands (issue, delegate,
// approve, ...).
func mandateCommands() map[string]command {
	return map[string]command{}
}
