" Vim syntax file
" Language:    netvm policy (.nvr), LANGUAGE.md version 1
" Maintainer:  netvm
" Install:     copy editors/vim/{syntax,ftdetect} into ~/.vim (or add editors/vim to 'runtimepath').
"
" Kept in step with editors/vscode/syntaxes/nvr.tmLanguage.json and lang/src/nvr.pest;
" tests/editors.rs checks both editors against netvm's own lexical rules on every example.
" Every item is a match (no :syn keyword), so that the order below decides: an item defined
" later wins where two start at the same place, and `tcp` in `tcp.dport` stays a field.

if exists("b:current_syntax")
  finish
endif

let s:cpo_save = &cpo
set cpo&vim
syn case match

syn match nvrDriver      "\v(\w|-|\.)@<![A-Za-z_]\w*\ze\("
syn match nvrOperator    "\V=>\|->\|==\|!=\|<=\|>=\|..\|<\|>\|&\|="
syn match nvrProtocol    "\v(\w|-|\.)@<!(eth|vlan|arp|ip|ip6|tcp|udp|icmp|icmp6)(\w|\.|-[^>])@!"
syn match nvrField       "\v(\w|-|\.)@<!(in_port|payload)(\w|\.|-[^>])@!"
syn match nvrField       "\v(\w|-|\.)@<!(eth|vlan|arp|ip|ip6|tcp|udp|icmp|icmp6|l4|pkt|payload)\.[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"
syn match nvrModule      "\v(\w|-|\.)@<!std\.[A-Za-z_]\w*(-[^>]\w*)*"
syn match nvrAction      "\v(\w|-|\.)@<!(drop|out|to|chain|balance|by|mirror|count|flow|before)(\w|-[^>])@!"
syn match nvrLogic       "\v(\w|-|\.)@<!(and|or|not|in|contains|starts_with|matches)(\w|-[^>])@!"
syn match nvrTrust       "\v(\w|-|\.)@<!(trusted|untrusted)(\w|-[^>])@!"
syn match nvrDeclaration "\v(\w|-|\.)@<!(import|const|let|port|vm|group|rule|default|test|on_failure)(\w|-[^>])@!"
syn match nvrNumber      "\v(\w|-)@<!(0x[0-9A-Fa-f_]+|0b[01_]+|\d[0-9_]*)(\w|:)@!"
syn match nvrAddress     "\v(\w|-|\.|:)@<!\d+(\.\d+){3}(\/\d+)?(\w|\.|:)@!"
syn match nvrAddress     "\v(\w|-|\.|:)@<!(\x{0,4}:){2,7}\x{0,4}(\.\d+){0,3}(\/\d+)?(\w|:)@!"
syn match nvrRegex       "\v\/(\/)@!(\\.|[^/\\])+\/[A-Za-z]*"
syn match nvrBadEscape   contained "\v\\."
syn match nvrEscape      contained "\v\\(x\x{2}|[nrt\\"])"
syn region nvrString     start=+"+ end=+"\|$+ contains=nvrEscape,nvrBadEscape
syn match nvrComment     "\v(#|\/\/).*$" contains=@Spell

hi def link nvrComment     Comment
hi def link nvrString      String
hi def link nvrEscape      SpecialChar
hi def link nvrBadEscape   Error
hi def link nvrRegex       String
hi def link nvrAddress     Constant
hi def link nvrNumber      Number
hi def link nvrDeclaration Keyword
hi def link nvrTrust       StorageClass
hi def link nvrLogic       Operator
hi def link nvrAction      Statement
hi def link nvrModule      Include
hi def link nvrField       Identifier
hi def link nvrProtocol    Type
hi def link nvrDriver      Function
hi def link nvrOperator    Operator

let b:current_syntax = "nvr"
let &cpo = s:cpo_save
unlet s:cpo_save
