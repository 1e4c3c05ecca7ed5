// mkestargz converts a tar into an eStargz layer with the containerd stargz library (the
// reference implementation), and writes the layer's TOC JSON exactly as stored in it.
//
// Usage: mkestargz IN.tar OUT.stargz OUT.toc.json [CHUNK_SIZE]
// Prints the layer's sha256 digest (hex, no prefix) on stdout.
package main

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "mkestargz: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 4 && len(os.Args) != 5 {
		fail("usage: mkestargz IN.tar OUT.stargz OUT.toc.json [CHUNK_SIZE]")
	}
	in, err := os.Open(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	st, err := in.Stat()
	if err != nil {
		fail("%v", err)
	}
	var opts []estargz.Option
	if len(os.Args) == 5 {
		n, err := strconv.Atoi(os.Args[4])
		if err != nil {
			fail("chunk size %q: %v", os.Args[4], err)
		}
		opts = append(opts, estargz.WithChunkSize(n))
	}
	blob, err := estargz.Build(io.NewSectionReader(in, 0, st.Size()), opts...)
	if err != nil {
		fail("build: %v", err)
	}
	out, err := os.Create(os.Args[2])
	if err != nil {
		fail("%v", err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(out, h), blob); err != nil {
		fail("write layer: %v", err)
	}
	blob.Close()
	size, err := out.Seek(0, io.SeekEnd)
	if err != nil {
		fail("%v", err)
	}
	tocOffset, _, err := estargz.OpenFooter(io.NewSectionReader(out, 0, size))
	if err != nil {
		fail("footer: %v", err)
	}
	zr, err := gzip.NewReader(io.NewSectionReader(out, tocOffset, size-tocOffset))
	if err != nil {
		fail("toc gzip: %v", err)
	}
	zr.Multistream(false)
	tr := tar.NewReader(zr)
	hdr, err := tr.Next()
	if err != nil {
		fail("toc tar: %v", err)
	}
	if hdr.Name != estargz.TOCTarName {
		fail("toc entry is %q", hdr.Name)
	}
	toc, err := os.Create(os.Args[3])
	if err != nil {
		fail("%v", err)
	}
	if _, err := io.Copy(toc, tr); err != nil {
		fail("write toc: %v", err)
	}
	if err := toc.Close(); err != nil {
		fail("%v", err)
	}
	if err := out.Close(); err != nil {
		fail("%v", err)
	}
	fmt.Println(hex.EncodeToString(h.Sum(nil)))
}
