" netvm policy files
autocmd BufRead,BufNewFile *.nvr setfiletype nvr
