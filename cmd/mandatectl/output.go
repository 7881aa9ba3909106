package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// outputFlag is -o/--output, limited to formats (the first is the default).
type outputFlag struct {
	value   string
	formats []string
}

func newOutputFlag(fs *pflag.FlagSet, formats ...string) *outputFlag {
	o := &outputFlag{value: formats[0], formats: formats}
	fs.StringVarP(&o.value, "output", "o", formats[0], "output format: "+strings.Join(formats, " | "))
	return o
}

// check refuses a format the command does not print (a usage error).
func (o *outputFlag) check() error {
	for _, f := range o.formats {
		if o.value == f {
			return nil
		}
	}
	return usagef("--output %q: want %s", o.value, strings.Join(o.formats, ", "))
}

// printProto prints m as json or yaml (protojson field names).
func printProto(w io.Writer, format string, m proto.Message) error {
	if format == "yaml" {
		return printYAML(w, m)
	}
	return printJSON(w, m)
}

// printValue prints a plain Go value as json or yaml.
func printValue(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}
