# Shared by scripts/demo.sh and scripts/tour.sh: numbered steps and notes
# on the terminal (bold, cyan and dim where the output is a terminal).
#   say TEXT    a numbered step
#   note TEXT   an explanation under it
if [[ -t 1 ]]; then
  B=$'\033[1m' C=$'\033[36m' D=$'\033[2m' R=$'\033[0m'
else
  B='' C='' D='' R=''
fi
step=0
say() { step=$((step + 1)); printf '\n%s%d. %s%s\n' "$B" "$step" "$*" "$R"; }
note() { printf '%s   %s%s\n' "$D" "$*" "$R"; }
