package main

// operatorCommands are the control-plane operator commands (apply, revoke,
// status, ...).
func operatorCommands() map[string]command {
	return map[string]command{}
}
