// Package doctest runs the walk-throughs of Mandate's documentation as
// tests: every ```console and ```sh block of the listed Markdown files, in
// order, in a fresh copy of the repository, and compares each console
// command's output with the one the document shows, modulo ids, times and
// durations.
//
// Markers, HTML comments on the line before a block:
//
//	<!-- doctest: walkthrough NAME -->  this block starts a new walk-through
//	                                    (fresh repository copy, processes of
//	                                    the previous one stopped)
//	<!-- doctest: skip REASON -->       this block is not run
//
// In a console block, a line starting with "$ " is a command (continued by
// a trailing backslash, and by the body of a here-document); the lines up
// to the next command are its output. An output line "..." matches any
// number of lines. sh blocks run without output checks, but must succeed.
package doctest
