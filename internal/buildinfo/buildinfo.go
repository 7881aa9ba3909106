// Package buildinfo reports what a Mandate binary was built from: the
// module version and the VCS revision Go stamped into it.
package buildinfo

import (
	"fmt"
	"runtime/debug"
)

// Info is what `version` prints.
type Info struct {
	Version   string // module version, "(devel)" for a local build
	Revision  string // VCS revision, empty when not stamped
	Time      string // commit time, RFC 3339
	Modified  bool   // the work tree had uncommitted changes
	GoVersion string
}

// Read returns the running binary's build information.
func Read() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "(unknown)"}
	}
	return fromBuildInfo(bi)
}

func fromBuildInfo(bi *debug.BuildInfo) Info {
	in := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if in.Version == "" {
		in.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Revision = s.Value
		case "vcs.time":
			in.Time = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// String is one line: "v1.2.3 (revision 0123abc, 2026-01-02T03:04:05Z, modified) go1.26".
func (in Info) String() string {
	s := in.Version
	if in.Revision != "" {
		s += " (revision " + in.Revision
		if in.Time != "" {
			s += ", " + in.Time
		}
		if in.Modified {
			s += ", modified"
		}
		s += ")"
	}
	if in.GoVersion != "" {
		s += " " + in.GoVersion
	}
	return s
}

// Line is what `NAME version` prints.
func Line(name string) string {
	return fmt.Sprintf("%s %s", name, Read())
}
