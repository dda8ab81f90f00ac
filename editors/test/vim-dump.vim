" Writes, for every line of the current buffer, the syntax item at each byte (`-` for none),
" space-separated, to the file named by $NVR_SYNTAX_OUT. Used by tests/editors.rs.
let s:out = []
for s:l in range(1, line('$'))
  let s:names = []
  for s:c in range(1, strlen(getline(s:l)))
    let s:name = synIDattr(synID(s:l, s:c, 1), 'name')
    call add(s:names, s:name ==# '' ? '-' : s:name)
  endfor
  call add(s:out, join(s:names, ' '))
endfor
call writefile(s:out, $NVR_SYNTAX_OUT)
