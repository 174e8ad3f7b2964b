"""Getting raw files safely: `http` downloads (resume, mirrors, checksums, refusing
stubs and HTML), `archives` extracts zip, tar and rar inside the dataset's folder,
`gzip_stream` checks a gzip stream as it is read (for parts damaged at the source)."""
