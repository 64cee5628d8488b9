// A web app with only Go's standard library: piku builds it with `go build` (no module
// downloads) and runs the binary, which is on PATH by its module name.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"strings"
)

func version() string {
	if v := os.Getenv("VERSION"); v != "" {
		return v
	}
	b, err := os.ReadFile("VERSION")
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(b))
}

func main() {
	addr := os.Getenv("BIND_ADDRESS") + ":" + os.Getenv("PORT")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s go %s\n", os.Getenv("APP"), version())
	})
	log.Printf("listening on %s", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
